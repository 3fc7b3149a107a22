"""EfficientNet-Lite0: top-1 agreement with FP32 on the images that install offline.

No ImageNet photographs install offline, so the images are Fashion-MNIST test images
upsampled to 224x224 and inverted (dark garments on white), :func:`bitfold.zoo.vision_images`.
ImageNet labels mean nothing for them, so the metric is agreement with the float model: the
fraction of held-out images whose quantized top-1 class equals the FP32 top-1 class.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch

from bitfold import zoo

from .task import Metric, Task, assert_disjoint, batches

BATCH = 16


def build(n_calib: int = 32, n_eval: int = 256, seed: int = 0) -> Task:
    model = zoo.load_model("efficientnet-lite0")
    images = zoo.vision_images(n_calib + n_eval, seed=seed, invert=True)
    calib_idx, eval_idx = zoo.split(np.arange(len(images)), n_calib=n_calib, seed=seed)
    assert_disjoint("efficientnet-lite0 images", calib_idx.tolist(), eval_idx.tolist())
    held_out = images[eval_idx]

    def top1(run: Callable[..., torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([run(*model.preprocess(b)).argmax(-1) for b in batches(held_out, BATCH)])

    reference = top1(model.module)

    def evaluate(run: Callable[..., torch.Tensor]) -> Dict[str, float]:
        return {"top1_agreement": float((top1(run) == reference).double().mean())}

    settings = {"model": model.source, "images": "bitfold.zoo.vision_images(fashion-mnist test, 224x224, inverted)",
                "image_seed": seed, "calibration_images": n_calib, "held_out_images": n_eval,
                "fp32_distinct_top1_classes": int(reference.unique().numel())}
    notes = [f"efficientnet-lite0: top-1 agreement with FP32 on {n_eval} held-out upsampled Fashion-MNIST images "
             f"(FP32 predicts {settings['fp32_distinct_top1_classes']} distinct ImageNet classes on them); "
             f"calibration: {n_calib} other images"]
    return Task(
        name="efficientnet-lite0", module=model.module,
        calibration=[model.preprocess(b) for b in batches(images[calib_idx], BATCH)],
        evaluate=evaluate, metrics=(Metric("top1_agreement", "top1 agree", 4),),
        settings=settings, notes=notes,
    )
