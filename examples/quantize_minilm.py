"""Quantize all-MiniLM-L6-v2 with bitfold recipes and compare sentence embeddings to FP32.

Calibrates on 128 Rotten Tomatoes snippets and evaluates on 256 disjoint ones: the mean and
minimum cosine similarity between the quantized and the FP32 embeddings, per recipe.

    python examples/quantize_minilm.py w8a8-int,w4a4-int,w4a4-fp-minmax,w4a4-fp
"""

from __future__ import annotations

import argparse
import time

import torch

import bitfold
from bitfold import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="?", default="w8a8-int,w4a4-int,w4a4-fp-minmax,w4a4-fp")
    parser.add_argument("--report", action="store_true", help="print the per-layer table of each recipe")
    args = parser.parse_args()

    model = zoo.load_model("minilm")
    calib, evals = zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=128, seed=0)
    calibration = [model.preprocess(list(calib.items[i:i + 16])) for i in range(0, 128, 16)]
    evaluation = [model.preprocess(list(evals.items[i:i + 32])) for i in range(0, 256, 32)]
    reference = torch.cat([model(*x) for x in evaluation])

    print(f"{'recipe':18s} {'mean cos':>8s} {'min cos':>8s} {'quantize s':>10s}")
    for name in args.recipes.split(","):
        start = time.perf_counter()
        quantized = bitfold.quantize(model.module, name, calibration, progress=False)
        seconds = time.perf_counter() - start
        out = torch.cat([quantized(*x) for x in evaluation])
        cos = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
        print(f"{name:18s} {float(cos.mean()):8.4f} {float(cos.min()):8.4f} {seconds:10.1f}", flush=True)
        if args.report:
            print(quantized.report())


if __name__ == "__main__":
    main()
