"""A small CNN trained here on Fashion-MNIST: labelled top-1 accuracy on the 10,000 test images.

The network is ``FashionCNN`` of ``benchmarks/splitquant.py`` (two 3x3 convolutions, two
linears), so both benchmarks measure the same model. It is trained on the ``train`` split less
``n_calib`` images held out for calibration (seeded init, shuffle and hold-out), with Adam,
and its weights are cached as safetensors under ``cache_dir`` keyed by a hash of the training
configuration and the network's source, so reruns skip training.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import safetensors.torch
import torch
from splitquant import FashionCNN
from torch import nn

from bitfold import zoo

from .task import Metric, Task, assert_disjoint

BATCH = 128
LR = 2e-3


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order_rng = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_rng)
        for i in range(0, len(x), BATCH):
            batch = order[i:i + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()


def _trained(cache_dir: Path, config: Dict[str, object], x: torch.Tensor, y: torch.Tensor) -> Tuple[nn.Module, dict]:
    """The trained network, from the cache if this exact configuration was trained before."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"fmnist-cnn-{key}.safetensors"
    torch.manual_seed(int(config["seed"]))
    model = FashionCNN()
    if path.is_file():
        model.load_state_dict(safetensors.torch.load_file(path))
        model.eval()
        return model, {"weights": str(path), "cached": True}
    start = time.perf_counter()
    _train(model, x, y, int(config["epochs"]), int(config["seed"]))
    seconds = time.perf_counter() - start
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=cache_dir)
    os.close(fd)
    safetensors.torch.save_file(model.state_dict(), tmp, metadata={"config": json.dumps(config, sort_keys=True)})
    os.replace(tmp, path)
    return model, {"weights": str(path), "cached": False, "train_seconds": round(seconds, 1)}


def build(cache_dir: Path, epochs: int = 2, n_train: int = 20000, n_calib: int = 256, seed: int = 0) -> Task:
    """``n_train``: training images (0: all of the train split but the calibration images);
    the default (2 epochs over 20,000 images, ~89% test accuracy) trains in about a minute on 2 cores."""
    train, test = zoo.load_dataset("fashion-mnist", split="train"), zoo.load_dataset("fashion-mnist", split="test")
    n_train = n_train or len(train) - n_calib
    perm = np.random.default_rng(seed).permutation(len(train))
    calib_idx, train_idx = np.sort(perm[:n_calib]), np.sort(perm[n_calib:n_calib + n_train])
    assert_disjoint("fmnist-cnn training vs calibration images", train_idx.tolist(), calib_idx.tolist())
    pixels = torch.from_numpy(train.items[train_idx]).float()
    mean, std = float(pixels.mean() / 255), float(pixels.std() / 255)

    def images(items: np.ndarray) -> torch.Tensor:
        return (torch.tensor(items).float() / 255 - mean).div(std).unsqueeze(1)

    config = {"network": hashlib.sha256(inspect.getsource(FashionCNN).encode()).hexdigest()[:16],
              "epochs": epochs, "batch": BATCH, "lr": LR, "optimizer": "adam", "seed": seed,
              "train_images": len(train_idx), "held_out_for_calibration": n_calib, "pixel_mean": mean,
              "pixel_std": std, "data": train.source}
    model, trained = _trained(cache_dir, config, images(train.items[train_idx]), torch.from_numpy(train.labels[train_idx]))
    tx, ty = images(test.items), torch.from_numpy(test.labels)

    def evaluate(run: Callable[..., torch.Tensor]) -> Dict[str, float]:
        with torch.no_grad():
            pred = torch.cat([run(tx[i:i + 500]).argmax(1) for i in range(0, len(tx), 500)])
        return {"top1": float((pred == ty).double().mean())}

    calib = images(train.items[calib_idx])
    notes = [f"fmnist-cnn: trained here ({epochs} epochs on {len(train_idx):,} images, seed {seed}"
             + ("" if trained["cached"] else f", {trained['train_seconds']:.0f} s") + "); labelled top-1 accuracy "
             f"on the {len(test):,} test images; calibration: {n_calib} held-out training images"]
    return Task(
        name="fmnist-cnn", module=model, calibration=[(calib[i:i + 64],) for i in range(0, len(calib), 64)],
        evaluate=evaluate, metrics=(Metric("top1", "top1", 4),),
        settings={"training": config, "test_images": len(test)}, notes=notes, run_info=trained,
    )
