"""Quantize EfficientNet-Lite0, export it to ONNX, and check ONNX Runtime against PyTorch.

    python examples/export_efficientnet_onnx.py                       # w4a4-fp-minmax
    python examples/export_efficientnet_onnx.py --recipe w4a8-fp --images 200 --out /tmp/effnet

Steps: calibrate on a few real images (Fashion-MNIST, upsampled to 224x224 — see
``bitfold.zoo.vision_images``), quantize with the recipe, export the quantized model in
``simulate`` mode (every quantize point in standard ONNX ops) and ``compressed`` mode
(low-bit weight initializers), export the float model too for scale, then run all three
files in ONNX Runtime on ``--images`` evaluation images and print, per file: size, the
largest error against its PyTorch reference, and how often the top-1 class agrees.
(The images are not ImageNet photos, so compare predictions, not accuracy.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

import bitfold
from bitfold import zoo
from bitfold.backends.onnx import ort_session
from bitfold.backends.onnx.agreement import agreement, combine
from bitfold.backends.onnx.runtime import run
from bitfold.ir import from_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="w4a4-fp-minmax")
    parser.add_argument("--calibration", type=int, default=8, help="calibration images")
    parser.add_argument("--images", type=int, default=64, help="evaluation images")
    parser.add_argument("--out", type=Path, default=Path("efficientnet_onnx"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    model = zoo.load_model("efficientnet-lite0")
    calibration_images = zoo.vision_images(args.calibration, seed=1)
    calibration = [model.preprocess(calibration_images[i:i + 2]) for i in range(0, args.calibration, 2)]
    q = bitfold.quantize(model.module, args.recipe, calibration, progress=False)
    print(q.report())

    example = calibration[0]  # a batch of 2 keeps the batch axis dynamic
    files = {
        "fp32": bitfold.export_onnx(from_torch(model.module, example, dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)),
                                    args.out / "efficientnet_lite0_fp32.onnx", example, output_names=["logits"]),
        "simulate": bitfold.export_onnx(q, args.out / f"efficientnet_lite0_{args.recipe}.onnx", example,
                                        output_names=["logits"]),
        "compressed": bitfold.export_onnx(q, args.out / f"efficientnet_lite0_{args.recipe}_compressed.onnx", example,
                                          mode="compressed", output_names=["logits"]),
    }
    evaluation = zoo.vision_images(args.images, seed=7)
    sessions = {name: ort_session(path) for name, path in files.items()}
    results = {name: [] for name in files}
    top1_float = {name: [] for name in files}
    for i in range(0, args.images, 16):
        (x,) = model.preprocess(evaluation[i:i + 16])
        with torch.no_grad():
            float_logits = model.module(x)
        quantized_logits = q(x)
        for name, session in sessions.items():
            got = run(session, [x])[0]
            results[name].append(agreement(got, float_logits if name == "fp32" else quantized_logits))
            top1_float[name].append(got.argmax(-1) == float_logits.argmax(-1).numpy())
    fp32_mb = files["fp32"].stat().st_size / 1e6
    print(f"\n{'file':11} {'MB':>6} {'x fp32':>6} {'max rel err':>11} {'top-1 = torch':>13} {'top-1 = float':>13}")
    for name, path in files.items():
        mb = path.stat().st_size / 1e6
        total = combine(results[name])
        print(f"{name:11} {mb:6.1f} {mb / fp32_mb:6.2f} {total.max_rel:11.2e} {total.argmax_match:13.3f} "
              f"{float(np.concatenate(top1_float[name]).mean()):13.3f}")
    print("max rel err / top-1 = torch: ONNX Runtime against PyTorch (the float model for fp32, bitfold's "
          "simulation for the quantized files); top-1 = float: against the float model")


if __name__ == "__main__":
    main()
