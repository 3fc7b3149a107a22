"""End-to-end latency of MiniLM and SmolLM2: PyTorch, ONNX Runtime and bitfold's TVM builds.

For each model one run times, on the same inputs and in the same process:

* ``torch fp32``: the zoo's ``nn.Module`` in eager mode (``torch.no_grad``);
* ``ort fp32``: the float graph exported by :func:`bitfold.export_onnx` (dynamic batch and
  sequence) in ONNX Runtime's CPU provider;
* ``tvm fp32``: the same float graph compiled by :func:`bitfold.compile`;
* ``tvm <recipe>``: the model quantized by :func:`bitfold.quantize` with each recipe
  (default ``w4a16-int-g128``: INT4 weights; ``w4a4-int``: INT4 weights and activations),
  compiled by :func:`bitfold.compile` (low-bit kernels from :mod:`bitfold.codegen`).

Phases: MiniLM encodes one sequence of ``--seq`` tokens (batch 1). SmolLM2 runs ``prefill``
(one sequence of ``--seq`` tokens) and ``decode``: one step that feeds a single new token.
bitfold's graphs carry no KV cache, so the decode step is measured as the forward pass of
one token (``[1, 1]`` inputs): the per-token work of every linear layer (GEMV), which is what
a cached decode step costs apart from attending over the cache (at 128 cached tokens a small
part of it for a 135M model).

Every system is checked in the same run: the float builds against PyTorch (max |Δ| / max |ref|),
the quantized builds against bitfold's PyTorch simulation of the same quantized graph (the
same error, plus the agreement of the top-1 next token for SmolLM2 / of the embedding's
largest component for MiniLM).

Timing hygiene: ``--threads`` threads everywhere (``torch.set_num_threads``, ORT
``intra_op_num_threads``, ``TVM_NUM_THREADS``), ``TVM_THREAD_POOL_SPIN_COUNT=0``,
``OMP_WAIT_POLICY=PASSIVE``, ORT spinning off. Every system is built and checked first, then
timed round-robin: ``--warmup`` untimed rounds, then ``--repeats`` timed rounds, each calling
every system once, so that a burst of load on a shared machine slows all of them alike; min
and median are reported and ratios use min times. The load average is
printed before and after: on a shared machine compare numbers only within one run.

    python benchmarks/e2e.py                                      # both models, default recipes
    python benchmarks/e2e.py --models minilm --recipes w4a16-int-g128,w4a4-int,w4a8-fp
    python benchmarks/e2e.py --cache /tmp/bitfold-e2e --json e2e.json   # reuse quantized models
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

THREADS_DEFAULT = str(os.cpu_count() or 1)


def _configure_threads(threads: int) -> None:
    """Must run before torch / TVM / ORT start their thread pools."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _time_interleaved(calls: Sequence[Callable[[], Any]], warmup: int, repeats: int) -> List[Dict[str, float]]:
    """Min and median ms of each of ``calls``, timed round-robin: every round calls each once.

    On a shared machine a burst of load can last seconds; timed one system after another,
    such a burst once made one build 45% slower than in the next run. Interleaved, a burst
    slows every system alike, and the ratios of one run stay comparable.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    times: List[List[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, spent in zip(calls, times):
            start = time.perf_counter()
            call()
            spent.append((time.perf_counter() - start) * 1e3)
    return [{"min_ms": min(t), "median_ms": statistics.median(t)} for t in times]


def _relative(got: Any, want: Any) -> float:
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _agreement(name: str, got: Any, want: Any, mask: Any) -> float:
    """Top-1 agreement: next token per real position (SmolLM2), largest component (MiniLM)."""
    import numpy as np

    same = np.asarray(got).argmax(-1) == np.asarray(want).argmax(-1)
    if name == "smollm2":
        same = same[np.asarray(mask).astype(bool)]
    return float(same.mean())


class Inputs:
    """The phases of one model: name → (torch tensors, numpy arrays)."""

    def __init__(self, lm: Any, seq: int) -> None:
        self.phases: Dict[str, tuple] = {"prefill": lm.example_inputs(batch=1, seq=seq)}
        if lm.name == "smollm2":
            self.phases["decode"] = lm.example_inputs(batch=1, seq=1)
        if lm.name == "minilm":
            self.phases = {"encode": self.phases["prefill"]}


def _capture_float(lm: Any, example: tuple) -> Any:
    """The float model in canonical form, batch and sequence dynamic, cleaned by the standard passes."""
    from torch.export import Dim

    from bitfold.ir import from_torch
    from bitfold.passes import run_standard_passes

    dims: Dict[str, Any] = {}
    shapes = tuple({axis: dims.setdefault(n, Dim(n, min=max(lo, 1), max=hi)) for axis, (n, lo, hi) in axes.items()}
                   for axes in lm.dynamic_axes)
    gm = from_torch(lm.module, example, dynamic_shapes=shapes)
    run_standard_passes(gm)
    return gm


def _quantized(lm: Any, recipe: str, calib_items: int, cache: Optional[Path]) -> Any:
    import bitfold
    from bitfold import zoo

    path = None if cache is None else cache / f"{lm.name}-{recipe}"
    if path is not None and (path / "graph.json").exists():
        return bitfold.QuantizedModel.load(path)
    texts = list(zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=2 * calib_items, seed=0)[0].items)
    # Pairs of texts: batches of different lengths keep the sequence axis dynamic.
    calibration = [lm.preprocess(texts[2 * i:2 * i + 2]) for i in range(calib_items)]
    start = time.perf_counter()
    quantized = bitfold.quantize(lm.module, recipe, calibration, progress=False)
    print(f"  quantized {lm.name} with {recipe} in {time.perf_counter() - start:.0f} s", flush=True)
    if path is not None:
        quantized.save(path, overwrite=True)
    return quantized


def _ort_file(lm: Any, gm: Any, example: tuple, cache: Optional[Path]) -> Path:
    from bitfold import export_onnx

    directory = cache if cache is not None else Path(tempfile.mkdtemp(prefix="bitfold-e2e-"))
    path = directory / f"{lm.name}-fp32.onnx"
    if not path.exists():
        export_onnx(gm, path, example, input_names=list(lm.input_names), output_names=list(lm.output_names))
    return path


def bench_model(name: str, args: argparse.Namespace, cache: Optional[Path]) -> List[Dict[str, Any]]:
    import torch

    import bitfold
    from bitfold import zoo
    from bitfold.backends.onnx import ort_session

    lm = zoo.load_model(name)
    phases = Inputs(lm, args.seq).phases
    target = f"llvm -mcpu=native -num-cores={args.threads}"
    rows: List[Dict[str, Any]] = []

    references = {phase: lm(*x).numpy() for phase, x in phases.items()}

    calls: List[Callable[[], Any]] = []

    def add(system: str, run: Callable[[str], Any], check: Callable[[str, Any], Dict[str, float]]) -> None:
        """Check ``run(phase)``'s output now; time the call (whatever it returns, no conversion) later."""
        for phase in phases:
            rows.append({"model": name, "phase": phase, "system": system, **check(phase, _numpy(run(phase)))})
            calls.append(lambda phase=phase: run(phase))

    def against_torch(phase: str, out: Any) -> Dict[str, float]:
        return {"rel_err": _relative(out, references[phase])}

    add("torch fp32", lambda phase: lm(*phases[phase]), lambda phase, out: {"rel_err": 0.0})

    start = time.perf_counter()
    example = lm.example_inputs(batch=2, seq=16)
    gm = _capture_float(lm, example)
    print(f"  captured {name} in {time.perf_counter() - start:.0f} s", flush=True)

    session = ort_session(_ort_file(lm, gm, example, cache), threads=args.threads)
    feeds = {phase: {n: t.numpy() for n, t in zip(lm.input_names, x)} for phase, x in phases.items()}
    add("ort fp32", lambda phase: session.run(None, feeds[phase])[0], against_torch)

    def add_tvm(system: str, model: Any, check: Callable[[str, Any], Dict[str, float]]) -> None:
        start = time.perf_counter()
        # example_inputs: a model loaded from --cache has no recorded input shapes.
        compiled = bitfold.compile(model, target, example_inputs=example)
        print(f"  compiled {system} in {time.perf_counter() - start:.0f} s", flush=True)
        on_device = {phase: compiled.device_inputs(*x) for phase, x in phases.items()}
        main, params = compiled.vm["main"], compiled.params
        add(system, lambda phase: main(*on_device[phase], *params), check)

    add_tvm("tvm fp32", gm, against_torch)
    for recipe in args.recipes:
        quantized = _quantized(lm, recipe, args.calib, cache)
        with torch.no_grad():
            simulated = {phase: quantized(*x).numpy() for phase, x in phases.items()}

        def against_simulation(phase: str, out: Any, simulated=simulated) -> Dict[str, float]:
            return {"rel_err": _relative(out, simulated[phase]),
                    "top1": _agreement(name, out, simulated[phase], phases[phase][1].numpy())}

        add_tvm(f"tvm {recipe}", quantized, against_simulation)
    print(f"  timing {len(calls)} calls round-robin ({args.warmup} + {args.repeats} rounds)", flush=True)
    for row, timing in zip(rows, _time_interleaved(calls, args.warmup, args.repeats)):
        row.update(timing)
        print(f"  {name:8s} {row['phase']:8s} {row['system']:22s} {row['min_ms']:9.2f} ms "
              f"(median {row['median_ms']:.2f})", flush=True)
    return rows


def _numpy(value: Any) -> Any:
    """A torch tensor, TVM tensor or numpy array as a numpy array (outside the timed loop)."""
    return value.numpy() if hasattr(value, "numpy") else value


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """One table: per model/phase/system min and median ms, speed-up over torch fp32 and ORT fp32."""
    base = {(r["model"], r["phase"], r["system"]): r["min_ms"] for r in rows}
    header = f"{'model':8s} {'phase':8s} {'system':22s} {'min ms':>9s} {'median':>9s} {'vs torch':>9s} " \
             f"{'vs ort':>7s} {'check':>18s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        torch_ms = base[(r["model"], r["phase"], "torch fp32")]
        ort_ms = base.get((r["model"], r["phase"], "ort fp32"))
        check = f"rel {r['rel_err']:.1e}" + (f" top1 {r['top1']:.0%}" if "top1" in r else "")
        lines.append(f"{r['model']:8s} {r['phase']:8s} {r['system']:22s} {r['min_ms']:9.2f} {r['median_ms']:9.2f} "
                     f"{torch_ms / r['min_ms']:8.2f}x {(ort_ms / r['min_ms']) if ort_ms else float('nan'):6.2f}x "
                     f"{check:>18s}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--recipes", default="w4a16-int-g128,w4a4-int")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=int(THREADS_DEFAULT))
    parser.add_argument("--calib", type=int, default=4, help="calibration batches (2 texts each)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cache", type=Path, help="keep quantized models and ONNX files here between runs")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.recipes = [r for r in args.recipes.split(",") if r]
    _configure_threads(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}  threads: {args.threads}  python {sys.version.split()[0]}",
          flush=True)
    rows: List[Dict[str, Any]] = []
    for name in args.models.split(","):
        rows += bench_model(name, args, args.cache)
    print(f"load average after: {os.getloadavg()}")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"load_average_after": os.getloadavg(), "threads": args.threads,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
