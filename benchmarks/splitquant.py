"""SplitQuant measured: accuracy at equal bit width and at equal memory, and the cost of its GEMM.

Accuracy: every variant is quantized with ``bitfold.quantize`` and compared to FP32 on held-out
data; next to each result stands the stored size of the quantized weights in bits per weight
(codes, cluster ids, scales and zero points, from the quantized model's manifest), so a
SplitQuant INT2 model can be compared with plain INT3/INT4 models of about the same memory.

* ``minilm``: mean / min cosine between FP32 and quantized sentence embeddings, 256 held-out
  Rotten Tomatoes snippets (calibration: 128 others);
* ``smollm2``: perplexity on held-out 256-token windows of Hamlet (calibration: 4 other windows);
* ``fmnist-cnn``: a small CNN trained here on Fashion-MNIST in under a minute (seeded), top-1
  accuracy on the 10,000 test images. Only its linear layers are quantized: the SplitQuant
  comparison recipes (``w2a16-int``, ``w3a16-int``, ``w4a16-int`` and the split ones) quantize
  linears only, so the two convolutions, 2% of the weights, stay float.

A variant is a recipe name, optionally with SplitQuant settings after a colon (joined by ``+``),
which add a split to any recipe or change the recipe's own: ``w2a16-int-split:k=2``,
``w2a16-int-split:k=4+per_channel=false``, ``w4a4-fp-minmax:k=3``.

Speed (``--speed``): the torch simulation of one layer, ``bitfold::codebook_linear`` (one GEMM
over the per-element codebook) against the ``k`` dense ``bitfold::quantized_linear`` GEMMs that
SplitQuant's parts would run, and plain INT(b) / INT(b+2), best of several runs.

    python benchmarks/splitquant.py --models minilm,smollm2,fmnist-cnn --json splitquant.json
    python benchmarks/splitquant.py --speed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

import bitfold
from bitfold import zoo
from bitfold.ir import formats, ops
from bitfold.passes.split_layers import cluster_masks, split_tensor
from bitfold.recipes import Recipe, SplitSpec, load_recipe

DEFAULT_VARIANTS = (
    "w2a16-int,w2a16-int-split,w2a16-int-split:per_channel=false,w2a16-int-split:k=2,w2a16-int-split:k=4,"
    "w3a16-int,w3a16-int-split,w4a16-int,w4a16-int:k=3"
)


def parse_variant(text: str) -> Recipe:
    """``name[:key=value+...]``: a named recipe, with SplitQuant settings added or changed."""
    name, _, settings = text.partition(":")
    recipe = load_recipe(name)
    if not settings:
        return recipe
    values: Dict[str, Any] = {}
    for item in settings.split("+"):
        key, _, raw = item.partition("=")
        if key not in ("k", "per_channel"):
            raise SystemExit(f"variant {text!r}: unknown SplitQuant setting {key!r} (k, per_channel)")
        values[key] = int(raw) if key == "k" else raw.lower() in ("1", "true", "yes")
    split = dataclasses.replace(recipe.split or SplitSpec(), **values)
    return dataclasses.replace(recipe, name=text, split=split)


# --------------------------------------------------------------------------- models


def _minilm() -> Tuple[nn.Module, List[tuple], Callable[[Callable], Dict[str, float]]]:
    model = zoo.load_model("minilm")
    calib, evals = zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=128, seed=0)
    calibration = [model.preprocess(list(calib.items[i:i + 16])) for i in range(0, 128, 16)]
    evaluation = [model.preprocess(list(evals.items[i:i + 32])) for i in range(0, 256, 32)]
    reference = torch.cat([model(*x) for x in evaluation])

    def evaluate(run: Callable) -> Dict[str, float]:
        out = torch.cat([run(*x) for x in evaluation])
        cos = nn.functional.cosine_similarity(out, reference, dim=-1)
        return {"mean_cosine": round(float(cos.mean()), 4), "min_cosine": round(float(cos.min()), 4)}

    return model.module, calibration, evaluate


def _smollm2(windows: int = 8, length: int = 256):
    model = zoo.load_model("smollm2")
    ids = model.tokenizer(zoo.load_dataset("hamlet").raw_text, add_special_tokens=False)["input_ids"]
    chunks = torch.tensor(ids[: (len(ids) // length) * length]).reshape(-1, length)
    calibration = [(chunks[i:i + 1],) for i in range(4)]
    stride = max(1, (len(chunks) - 4) // windows)
    evaluation = chunks[4::stride][:windows]

    def evaluate(run: Callable) -> Dict[str, float]:
        with torch.no_grad():
            logits = torch.cat([run(evaluation[i:i + 1]) for i in range(len(evaluation))])
        nll = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                          evaluation[:, 1:].reshape(-1))
        return {"perplexity": round(float(torch.exp(nll)), 3)}

    return _LogitsOnly(model.module), calibration, evaluate


class _LogitsOnly(nn.Module):
    """The LM called with input ids alone (no attention mask: full, unpadded windows)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids)


class FashionCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 7 * 7, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _images(ds) -> torch.Tensor:
    return (torch.tensor(ds.items).float() / 255.0 - 0.2860).div(0.3530).unsqueeze(1)


def _fmnist_cnn(train_images: int = 30000, epochs: int = 1):
    torch.manual_seed(0)
    train, test = zoo.load_dataset("fashion-mnist", split="train"), zoo.load_dataset("fashion-mnist", split="test")
    x, y = _images(train)[:train_images], torch.from_numpy(train.labels)[:train_images]
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
        for i in range(0, len(x), 128):
            batch = order[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    calibration = [(_images(train)[train_images + i:train_images + i + 64],) for i in range(0, 256, 64)]
    tx, ty = _images(test), torch.from_numpy(test.labels)

    def evaluate(run: Callable) -> Dict[str, float]:
        with torch.no_grad():
            pred = torch.cat([run(tx[i:i + 500]).argmax(1) for i in range(0, len(tx), 500)])
        return {"top1": round(float((pred == ty).float().mean()), 4)}

    evaluate.train_seconds = train_seconds  # type: ignore[attr-defined]
    return model, calibration, evaluate


MODELS = {"minilm": _minilm, "smollm2": _smollm2, "fmnist-cnn": _fmnist_cnn}


def measure_accuracy(name: str, variants: List[str]) -> Dict[str, Any]:
    module, calibration, evaluate = MODELS[name]()
    with torch.no_grad():
        fp32 = evaluate(lambda *x: module(*x))
    rows: Dict[str, Any] = {"fp32": {**fp32, "bits_per_weight": 32.0}}
    print(f"\n{name}: fp32 {fp32}" + (f" (trained in {evaluate.train_seconds:.0f} s)"
                                      if hasattr(evaluate, "train_seconds") else ""), flush=True)
    for variant in variants:
        recipe = parse_variant(variant)
        start = time.perf_counter()
        quantized = bitfold.quantize(module, recipe, calibration, progress=False)
        seconds = time.perf_counter() - start
        memory = quantized.manifest()["memory"]
        row = {**evaluate(quantized), "bits_per_weight": memory["bits_per_weight"],
               "quantized_weights": memory["quantized_weights"], "quantize_seconds": round(seconds, 1)}
        rows[variant] = row
        print(f"  {variant:36s} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


# --------------------------------------------------------------------------- speed


def _best_of(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _minmax(w: torch.Tensor, fmt: str) -> Tuple[ops.PackedWeight, torch.Tensor]:
    """Asymmetric per-row min/max (range incl. 0), as the w*a16-int recipes choose it."""
    f = formats.get(fmt)
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    s = ((hi - lo) / f.qmax).clamp_min(1e-12)
    z = torch.round(-lo / s).clamp(0, f.qmax)
    return ops.pack_weight(w, fmt, s, zero_point=z), z


def _split_layer(n: int, kdim: int, k: int, fmt: str):
    """A random ``[n, kdim]`` weight split by exact per-channel k-means: its k quantized parts
    (SplitQuant's dense form), its codebook form, and the unsplit weight."""
    torch.manual_seed(0)
    w = torch.randn(n, kdim) * 0.02
    ids = cluster_masks(w, k, per_channel=True)
    parts = [_minmax(p, fmt) for p in split_tensor(w, ids, k)]
    f = formats.get(fmt)
    codes = torch.stack([f.encode(p.unpack(), p.scale, axis=0, zero_point=z) for p, z in parts])
    cw = ops.codebook_from_codes(codes.gather(0, ids[None])[0], ids, fmt, torch.stack([p.scale for p, _ in parts]),
                                 zero_point=torch.stack([z for _, z in parts]))
    return parts, cw, w


def measure_speed(shapes: List[Tuple[int, int]], batches: List[int], bits: int = 2, k: int = 3,
                  repeat: int = 5) -> List[Dict[str, Any]]:
    """Microseconds per call: codebook_linear vs k quantized_linear parts vs plain INT(b) and INT(b+2)."""
    fmt = f"uint{bits}"
    rows = []
    for n, kdim in shapes:
        parts, cw, w = _split_layer(n, kdim, k, fmt)
        part_args = [(p.packed, fmt, n, kdim, p.scale, None, z, None, None) for p, z in parts]
        plain = {}
        for b in (bits, bits + 2):
            pw, z = _minmax(w, f"uint{b}")
            plain[b] = (pw.packed, pw.fmt, n, kdim, pw.scale, None, z, None, None)
        for m in batches:
            x = torch.randn(m, kdim)
            codebook = _best_of(lambda: torch.ops.bitfold.codebook_linear(
                x, cw.packed_codes, cw.packed_ids, fmt, n, kdim, k, cw.scale, None, cw.zero_point, None, None), repeat)
            parts_s = _best_of(lambda: sum(torch.ops.bitfold.quantized_linear(x, *a) for a in part_args), repeat)
            row = {"shape": [n, kdim], "batch": m, "codebook_us": round(codebook * 1e6),
                   f"{k}_parts_us": round(parts_s * 1e6)}
            for b, a in plain.items():
                row[f"int{b}_us"] = round(_best_of(lambda: torch.ops.bitfold.quantized_linear(x, *a), repeat) * 1e6)
            row["parts_over_codebook"] = round(parts_s / codebook, 2)
            rows.append(row)
            print("  " + "  ".join(f"{key} {v}" for key, v in row.items()), flush=True)
    return rows


def _tvm_seconds(lib, name: str, arrays: List[Any], repeat: int) -> float:
    """Best of ``repeat`` timings (each the mean of enough calls to take ~50 ms) of one compiled kernel."""
    import tvm

    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    timer = lib.jit().time_evaluator(name, tvm.cpu(), number=1, repeat=1, min_repeat_ms=50)
    return min(timer(*args).mean for _ in range(repeat))


def measure_tvm_speed(shapes: List[Tuple[int, int]], batches: List[int], k: int = 3,
                      repeat: int = 5) -> List[Dict[str, Any]]:
    """Microseconds per call of compiled kernels: the codebook kernel (INT2 codes + cluster ids, one pass)
    against SplitQuant's k dense INT2 GEMMs (bitfold.codegen's quantized_linear kernel, run k times;
    the k − 1 additions of their outputs are not counted), plain INT2 and plain INT4."""
    import tvm

    from bitfold.codegen import LinearKernelSpec, build_linear_kernel, host_cpu_target, kernel_inputs_from_tensors
    from bitfold.codegen.codebook_linear import codebook_kernel_inputs, codebook_spec, compile_codebook_kernel

    target = host_cpu_target()
    rows = []
    for n, kdim in shapes:
        parts, cw, w = _split_layer(n, kdim, k, "uint2")
        cb_spec = codebook_spec(cw, False, False)
        cb_lib, cb_arrays = compile_codebook_kernel(cb_spec, target), codebook_kernel_inputs(cb_spec, cw)
        kernels = {}
        for bits in (2, 4):
            spec = LinearKernelSpec(f"uint{bits}", n, kdim, None, True, False, False)
            func = build_linear_kernel(spec, target)
            kernels[bits] = (spec, tvm.compile(func, target=target), str(func.attrs["global_symbol"]))
        dense = {bits: [kernel_inputs_from_tensors(kernels[bits][0], pw.packed, pw.scale, z, None, None)
                        for pw, z in ([_minmax(w, f"uint{bits}")] if bits == 4 else parts + [_minmax(w, "uint2")])]
                 for bits in kernels}
        for m in batches:
            x = np.random.default_rng(0).standard_normal((m, kdim)).astype(np.float32)
            y = np.zeros((m, n), np.float32)
            row = {"shape": [n, kdim], "batch": m,
                   "codebook_us": round(_tvm_seconds(cb_lib, cb_spec.name(None), [x, *cb_arrays, y], repeat) * 1e6, 1)}
            _, lib2, name2 = kernels[2]
            row[f"{k}_int2_parts_us"] = round(sum(
                _tvm_seconds(lib2, name2, [x, *arrays, y], repeat) for arrays in dense[2][:k]) * 1e6, 1)
            row["int2_us"] = round(_tvm_seconds(lib2, name2, [x, *dense[2][k], y], repeat) * 1e6, 1)
            _, lib4, name4 = kernels[4]
            row["int4_us"] = round(_tvm_seconds(lib4, name4, [x, *dense[4][0], y], repeat) * 1e6, 1)
            row["parts_over_codebook"] = round(row[f"{k}_int2_parts_us"] / row["codebook_us"], 2)
            rows.append(row)
            print("  " + "  ".join(f"{key} {v}" for key, v in row.items()), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated recipe[:split settings joined by +], e.g. w2a16-int-split:k=2")
    parser.add_argument("--speed", action="store_true", help="time the codebook GEMM against the split parts")
    parser.add_argument("--tvm-speed", action="store_true", help="the same with kernels compiled by TVM")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result: Dict[str, Any] = {"load_average": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    print(f"load average {result['load_average']}, torch threads {result['torch_threads']}")
    variants = args.variants.split(",")
    for name in filter(None, args.models.split(",")):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        result[name] = measure_accuracy(name, variants)
    if args.speed:
        print("\nspeed (microseconds per call, best of 5)")
        result["speed"] = measure_speed([(384, 1536), (1536, 384), (576, 1536)], [1, 16, 256])
    if args.tvm_speed:
        print("\nTVM kernels (microseconds per call, best of 5)")
        result["tvm_speed"] = measure_tvm_speed([(384, 1536), (1536, 384), (576, 1536)], [1, 16, 128])
    result["load_average_end"] = os.getloadavg()
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as fh:
            json.dump(result, fh, indent=1)
        os.replace(fh.name, args.json)


if __name__ == "__main__":
    main()
