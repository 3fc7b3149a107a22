"""ONNX Runtime latency of FP32 vs compressed W4 (MatMulNBits) exports of MiniLM and SmolLM2.

For each model the script

1. captures the float model and exports it with :func:`bitfold.export_onnx` (the same
   exporter, no quantized ops: the FP32 baseline);
2. quantizes it with ``w4a16-int-g128`` (INT4 weights, per group of 128, zero points) on a
   few real calibration texts and exports it in compressed mode twice, with MatMulNBits at
   ``accuracy_level`` 0 (float32 compute) and 4 (int8 compute);
3. times each file in ONNX Runtime's CPU provider on one real batch: ``--threads`` intra-op
   threads, ``session.intra_op.allow_spinning = 0``, ``--warmup`` untimed runs, then
   ``--repeats`` timed runs; reports min and median milliseconds and the ratio to FP32;
4. checks each file's output against its PyTorch reference (the float model for FP32, the
   bitfold simulation for W4) with :mod:`bitfold.backends.onnx.agreement`.

The load average (``os.getloadavg``) is printed before and after the timings: on a shared
machine compare numbers only within one run.

With ``--agreement RECIPES`` it instead measures, for every model (``efficientnet-lite0``
too) and recipe, how the ``simulate`` and ``compressed`` exports agree with bitfold's
PyTorch simulation on a real evaluation set (max/mean abs and rel error, argmax/top-1
agreement: per image, per sentence embedding, per next-token prediction), and how large
they are next to the FP32 export — the whole file, and the quantized layers' stored bytes
against their float32 weights — and the task metric computed from the ONNX file's outputs
alone next to the simulation's: SmolLM2's next-token perplexity, MiniLM's mean cosine of
the sentence embeddings to FP32's, EfficientNet-Lite0's top-1 agreement with FP32 — and how
many items (batch rows) the file reproduces to 1e-5: an activation-quantized graph re-rounds
activations, so where another runtime's float rounding moves a value across a rounding
boundary one code flips and that item alone drifts. Quantized models are read from ``--cache`` as
``<model>-<recipe>`` (a ``QuantizedModel.save`` directory) when there, else quantized on
``--calibration`` batches.

    python benchmarks/onnx_latency.py                                  # minilm and smollm2
    python benchmarks/onnx_latency.py --models minilm --batch 8 --seq 128 --repeats 30
    python benchmarks/onnx_latency.py --cache /tmp/bitfold-bench --json out.json   # reuse exports
    python benchmarks/onnx_latency.py --agreement w4a8-fp,w4a4-int,w4a16-int-g128,w4a4-fp \
        --models minilm,smollm2,efficientnet-lite0 --cache /tmp/bitfold-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

import bitfold
from bitfold import zoo
from bitfold.backends.onnx import export_onnx, ort_session, read_metadata
from bitfold.backends.onnx.agreement import agreement, combine
from bitfold.backends.onnx.runtime import feeds
from bitfold.ir import from_torch

RECIPE = "w4a16-int-g128"
TEXTS = {"minilm": "rotten-tomatoes", "smollm2": "news"}


def real_batch(model: zoo.LoadedModel, name: str, batch: int, seq: int, offset: int) -> tuple:
    """``batch`` real texts (images for EfficientNet), tokenized and padded or cut to exactly ``seq`` tokens."""
    if name == "efficientnet-lite0":
        return model.preprocess(zoo.vision_images(offset + batch, seed=3)[offset:])
    texts = list(zoo.load_dataset(TEXTS[name]).items)[offset:offset + batch]
    ids, mask = model.preprocess(texts, max_length=seq)
    if ids.shape[1] < seq:  # every text shorter than seq: pad to seq
        pad = seq - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad), value=int(model.tokenizer.pad_token_id or 0))
        mask = torch.nn.functional.pad(mask, (0, pad))
    return ids, mask


def time_session(path: Path, inputs: Sequence[torch.Tensor], threads: int, warmup: int, repeats: int) -> Dict[str, Any]:
    session = ort_session(path, threads=threads)
    named = feeds(session, inputs)
    for _ in range(warmup):
        session.run(None, named)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, named)
        times.append((time.perf_counter() - start) * 1e3)
    return {"min_ms": min(times), "median_ms": statistics.median(times), "output": session.run(None, named)[0]}


def fp32_file(name: str, model: zoo.LoadedModel, example: tuple, cache: Path) -> Path:
    """The float model exported by the same exporter (batch and sequence axes dynamic)."""
    path = cache / f"{name}-fp32.onnx"
    if not path.exists():
        dims = tuple({d: torch.export.Dim.DYNAMIC for d in range(2 if x.dim() == 2 else 1)} for x in example)
        export_onnx(from_torch(model.module, example, dynamic_shapes=dims), path, example,
                    output_names=list(model.output_names))
    return path


def exports(name: str, cache: Path, calib_items: int, seq: int) -> Dict[str, Path]:
    """The FP32 and W4 (accuracy levels 0 and 4) files of ``name``, exported into ``cache`` if missing.

    The export example has ``seq`` tokens: a quantized model captured with a static length
    (all its calibration texts were cut to one length) only accepts that length.
    """
    model = zoo.load_model(name)
    example = real_batch(model, name, 2, seq, offset=0)
    files = {"fp32": fp32_file(name, model, example, cache), "w4-L0": cache / f"{name}-w4-L0.onnx",
             "w4-L4": cache / f"{name}-w4-L4.onnx"}
    if not files["w4-L0"].exists() or not files["w4-L4"].exists():
        q = quantized(name, RECIPE, cache, calib_items)
        for level in (0, 4):
            export_onnx(q, files[f"w4-L{level}"], example, mode="compressed", accuracy_level=level,
                        output_names=list(model.output_names))
    return files


def benchmark(name: str, args: argparse.Namespace, cache: Path) -> List[Dict[str, Any]]:
    files = exports(name, cache, args.calibration, args.seq)
    model = zoo.load_model(name)
    inputs = real_batch(model, name, args.batch, args.seq, offset=1000)
    with torch.no_grad():
        float_reference = model.module(*inputs)
    quantized = bitfold.QuantizedModel.load(cache / f"{name}-{RECIPE}")
    w4_reference = quantized(*inputs)
    rows = []
    for label, path in files.items():
        timing = time_session(path, inputs, args.threads, args.warmup, args.repeats)
        reference = float_reference if label == "fp32" else w4_reference
        meta = read_metadata(path)
        rows.append({
            "model": name, "file": label, "mb": path.stat().st_size / 1e6,
            "accuracy_level": meta.get("accuracy_level"),
            "min_ms": timing["min_ms"], "median_ms": timing["median_ms"],
            "agreement": agreement(timing["output"], reference).as_dict(),
        })
    base = rows[0]
    for row in rows:
        row["min_ratio"] = row["min_ms"] / base["min_ms"]
        row["median_ratio"] = row["median_ms"] / base["median_ms"]
        row["size_ratio"] = row["mb"] / base["mb"]
    return rows


def quantized(name: str, recipe: str, cache: Path, calib_items: int) -> "bitfold.QuantizedModel":
    """The cached ``<name>-<recipe>`` quantized model, or a new one (then cached)."""
    artifact = cache / f"{name}-{recipe}"
    if artifact.exists():
        return bitfold.QuantizedModel.load(artifact)
    model = zoo.load_model(name)
    # Lengths differ between batches so that the sequence axis stays dynamic in the captured graph.
    calibration = [real_batch(model, name, 4, 48 + 8 * i, offset=100 + 4 * i) for i in range(calib_items)]
    q = bitfold.quantize(model.module, recipe, calibration, progress=False)
    q.save(artifact)
    return q


def perplexity(batches: Sequence[tuple], logits: Sequence[Any]) -> float:
    """Next-token perplexity over ``batches`` (ids, mask) given each batch's logits."""
    nll = [math.log(zoo.perplexity(lambda ids, mask, out=out: torch.as_tensor(out), *b)) for b, out in
           zip(batches, logits)]
    return math.exp(sum(nll) / len(nll))


def task_metric(name: str, batches: Sequence[tuple], outputs: Sequence[Any], float_outputs: Sequence[Any]) -> tuple:
    """``(metric name, value)`` of ``outputs`` as the LLM-FP4 accuracy benchmark reports it for ``name``:
    SmolLM2 next-token perplexity, MiniLM mean cosine of the sentence embeddings to FP32's,
    EfficientNet-Lite0 top-1 agreement with FP32."""
    if name == "smollm2":
        return "perplexity", perplexity(batches, outputs)
    got = torch.cat([torch.as_tensor(o) for o in outputs])
    want = torch.cat([torch.as_tensor(o) for o in float_outputs])
    if name == "minilm":
        return "cosine to fp32", float(torch.nn.functional.cosine_similarity(got, want, dim=-1).mean())
    return "top-1 = fp32", float((got.argmax(-1) == want.argmax(-1)).float().mean())


def float_weight_bytes(layers: Dict[str, Any]) -> int:
    return sum(4 * facts["shape"][0] * facts["shape"][1] for facts in layers.values() if "shape" in facts)


def exact_items(outputs: Sequence[Any], references: Sequence[Any], tolerance: float = 1e-5) -> Tuple[int, int]:
    """How many items (sentences, images, sequences: the batch axis) the file reproduces to
    ``tolerance`` relative to the output's magnitude, of how many. An activation-quantized
    graph is discontinuous: where a runtime's float rounding moves a value across a rounding
    boundary, one code flips and that item alone drifts, so this count tells rare flips
    (most items exact) from a systematic difference (none exact)."""
    exact = total = 0
    for out, ref in zip(outputs, references):
        a = np.asarray(out, dtype=np.float64)
        b = ref.detach().double().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float64)
        per_item = np.abs(a - b).reshape(a.shape[0], -1).max(1) / max(np.abs(b).max(), 1e-30)
        exact += int((per_item <= tolerance).sum())
        total += len(per_item)
    return exact, total


def agreement_rows(name: str, recipes: Sequence[str], args: argparse.Namespace, cache: Path) -> List[Dict[str, Any]]:
    """Simulate and compressed exports of every recipe against the PyTorch simulation (see the docstring)."""
    model = zoo.load_model(name)
    example = real_batch(model, name, 2, args.seq, offset=0)
    fp32 = fp32_file(name, model, example, cache)
    batches = [real_batch(model, name, args.batch, args.seq, offset=1000 + args.batch * i)
               for i in range(args.eval_batches)]
    with torch.no_grad():
        float_outputs = [model.module(*b) for b in batches]
    rows = []
    for recipe in recipes:
        q = quantized(name, recipe, cache, args.calibration)
        references = [q(*b) for b in batches]
        for mode in ("simulate", "compressed"):
            path = cache / f"{name}-{recipe}-{mode}.onnx"
            if not path.exists():
                export_onnx(q, path, example, mode=mode, accuracy_level=0, output_names=list(model.output_names))
            session = ort_session(path, threads=args.threads)
            outputs = [session.run(None, feeds(session, b))[0] for b in batches]
            results = [agreement(out, ref) for out, ref in zip(outputs, references)]
            layers = read_metadata(path)["layers"]
            stored = sum(f.get("stored_bytes", 0) for f in layers.values())
            row = {"model": name, "recipe": recipe, "mode": mode, "mb": path.stat().st_size / 1e6,
                   "size_ratio": path.stat().st_size / fp32.stat().st_size,
                   "layer_ratio": stored / max(float_weight_bytes(layers), 1), "agreement": combine(results).as_dict(),
                   "exact_items": exact_items(outputs, references)}
            # the task metric, from the ONNX file alone and from the simulation
            row["metric"], row["task_onnx"] = task_metric(name, batches, outputs, float_outputs)
            row["task_torch"] = task_metric(name, batches, references, float_outputs)[1]
            rows.append(row)
    return rows


def print_agreement(rows: List[Dict[str, Any]]) -> None:
    header = f"{'model':18} {'recipe':15} {'mode':10} {'MB':>7} {'file/fp32':>9} {'layers/fp32':>11} " \
             f"{'max abs':>9} {'mean abs':>9} {'max rel':>9} {'mean rel':>9} {'argmax':>7} {'rows':>6} {'exact':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        a = r["agreement"]
        print(f"{r['model']:18} {r['recipe']:15} {r['mode']:10} {r['mb']:7.1f} {r['size_ratio']:9.3f} "
              f"{r['layer_ratio']:11.3f} {a['max_abs']:9.2e} {a['mean_abs']:9.2e} {a['max_rel']:9.2e} "
              f"{a['mean_rel']:9.2e} {a['argmax_match']:7.4f} {a['rows']:6d} {'%d/%d' % tuple(r['exact_items']):>7}"
              + f"  {r['metric']}: onnx {r['task_onnx']:.4f} torch {r['task_torch']:.4f}")
    print("errors: ONNX Runtime (CPU) vs bitfold's PyTorch simulation; rel = relative to the output's max / mean "
          "magnitude; argmax: fraction of rows (images, embeddings, token positions) with the same argmax; "
          "layers/fp32: stored bytes of the quantized layers (codes, scales, zero points) over their float32 weights; "
          "exact: items (batch rows) reproduced to 1e-5 of the output's magnitude")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=4, help="calibration batches of 4 texts for w4a16")
    parser.add_argument("--cache", type=Path, help="directory to keep (and reuse) exported files in")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--agreement", help="comma-separated recipes: measure export agreement instead of latency")
    parser.add_argument("--eval-batches", type=int, default=4, help="--agreement: evaluation batches")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.agreement:
            recipes = [r.strip() for r in args.agreement.split(",") if r.strip()]
            rows = [row for name in names for row in agreement_rows(name, recipes, args, cache)]
            print(f"load average {os.getloadavg()}; batches of {args.batch} x {args.seq} tokens")
            print_agreement(rows)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
            return
        for name in names:  # export first, so that exporting does not overlap the timings
            exports(name, cache, args.calibration, args.seq)
        load_before = os.getloadavg()
        rows = [row for name in names for row in benchmark(name, args, cache)]
        load_after = os.getloadavg()
    print(f"ONNX Runtime CPU, {args.threads} threads, no spinning, batch {args.batch} x {args.seq} tokens, "
          f"{args.repeats} runs after {args.warmup} warm-up")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    header = f"{'model':8} {'file':6} {'MB':>7} {'size':>5} {'min ms':>8} {'x fp32':>6} {'med ms':>8} {'x fp32':>6} " \
             f"{'max rel err':>11} {'argmax':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        a = r["agreement"]
        print(f"{r['model']:8} {r['file']:6} {r['mb']:7.1f} {r['size_ratio']:5.2f} {r['min_ms']:8.1f} "
              f"{r['min_ratio']:6.2f} {r['median_ms']:8.1f} {r['median_ratio']:6.2f} {a['max_rel']:11.2e} "
              f"{a['argmax_match']:6.3f}")
    print("max rel err: ONNX Runtime vs PyTorch (fp32: the float model; w4: bitfold's simulation of the same "
          "quantized model); argmax: fraction of rows whose argmax agrees")
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "rows": rows,
                                         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


if __name__ == "__main__":
    main()
