"""bitfold's main job in one run: MiniLM to 4-bit floating point, exported, compiled, measured.

``make demo`` runs this script. It takes all-MiniLM-L6-v2 (a sentence encoder, from
:mod:`bitfold.zoo`) and:

1. quantizes it with the ``w4a4-fp`` recipe (LLM-FP4: 4-bit floating-point weights *and*
   activations, formats and exponent biases searched, pre-shifted exponent bias), and with
   ``w4a4-int`` (MinMax INT4) for comparison: ``bitfold.quantize`` calibrates on 128 Rotten
   Tomatoes snippets;
2. exports the W4A4-FP model to a compressed ONNX file (``bitfold.export_onnx``) and compiles
   it for this CPU with TVM (``bitfold.compile``, target ``llvm -mcpu=native``);
3. prints one table:

   * **accuracy**: the cosine similarity between each model's sentence embeddings and the
     FP32 model's, mean (and minimum) over 256 held-out snippets (disjoint from the
     calibration set); the compiled model is scored too;
   * **size**: the FP32 ONNX file next to the compressed W4A4-FP ONNX file and the compiled
     TVM library with its weights, and the quantized linears' weights as stored (codes,
     scales); the embeddings and norms stay fp32;
   * **latency** of one batch of held-out snippets: PyTorch fp32 (eager), ONNX Runtime fp32
     (the model as ``torch.onnx.export`` writes it) and bitfold's TVM build of W4A4-FP.

   Every backend's output is checked in the same run: the fp32 ones against PyTorch, the
   W4A4-FP ones (TVM, and the compressed ONNX file in ONNX Runtime) against bitfold's PyTorch
   simulation of the same quantized graph, the reference for every backend.

Timing hygiene (as in ``benchmarks/e2e.py``): ``--threads`` threads everywhere, worker threads
do not spin (``TVM_THREAD_POOL_SPIN_COUNT=0``, ``OMP_WAIT_POLICY=PASSIVE``, ONNX Runtime's
``allow_spinning=0``), ``--warmup`` untimed runs, then min and median of ``--repeats``
runs. The load average is printed with the table: on a shared machine compare latencies only
within one run.

    python examples/demo.py                        # what `make demo` runs: a few minutes
    python examples/demo.py --threads 1 --repeats 30 --batch 1
    python examples/demo.py --keep /tmp/demo       # keep the quantized model, ONNX files and .so
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

CALIBRATION_TEXTS, EVALUATION_TEXTS, CALIBRATION_BATCH, EVALUATION_BATCH = 128, 256, 16, 32


def configure_threads(threads: int) -> None:
    """Thread-pool settings; they must be in the environment before torch, TVM or ORT start."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Progress:
    """Numbered stage messages with the time since the start, on stderr."""

    def __init__(self, stages: int) -> None:
        self.stages, self.stage, self.start = stages, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.stage += 1
        print(f"[{self.stage}/{self.stages} {self.elapsed():5.0f} s] {message}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> Tuple[float, float]:
    """(min, median) wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


def relative_difference(got: Any, want: Any) -> float:
    """``max |got - want| / max |want|``."""
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


class Agreement:
    """Backend-vs-reference checks; those beyond ``tolerance`` are listed under the table.

    ``tolerance`` is the relative agreement bitfold's tests demand of its backends (1e-4).
    """

    def __init__(self, tolerance: float = 1e-4) -> None:
        self.tolerance, self.beyond = tolerance, []

    def __call__(self, what: str, got: Any, want: Any) -> str:
        difference = relative_difference(got, want)
        if difference > self.tolerance:
            self.beyond.append(f"{what}: max relative difference {difference:.1e} > {self.tolerance:.0e}")
        return f"{difference:.1e}"


def cosine_to(reference, outputs) -> Tuple[float, float]:
    """Mean and minimum cosine similarity of ``outputs`` rows to ``reference`` rows."""
    import torch

    cos = torch.nn.functional.cosine_similarity(torch.as_tensor(outputs), reference, dim=-1)
    return float(cos.mean()), float(cos.min())


def megabytes(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` threads that do not spin between runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def format_table(rows: Sequence[Sequence[str]]) -> str:
    header = ["", "system", "result", "check (same run)"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every system")
    parser.add_argument("--batch", type=int, default=8, help="held-out snippets in the timed batch (default 8)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--recipe", default="w4a4-fp", help="the 4-bit FP recipe to show (default w4a4-fp)")
    parser.add_argument("--keep", type=Path, help="write the quantized model and the ONNX / TVM files here")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bitfold-demo-") as scratch:
        run_demo(args, args.keep or Path(scratch))


def run_demo(args: argparse.Namespace, work: Path) -> None:
    """Quantize, export, compile, score and time (see the module docstring); print the table."""

    import torch

    import bitfold
    from bitfold import zoo

    torch.set_num_threads(args.threads)
    say = Progress(stages=8)
    work.mkdir(parents=True, exist_ok=True)

    say("loading all-MiniLM-L6-v2 and Rotten Tomatoes")
    model = zoo.load_model("minilm")
    calib, evals = zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=CALIBRATION_TEXTS, seed=0,
                             n_eval=EVALUATION_TEXTS)
    calibration = [model.preprocess(list(calib.items[i:i + CALIBRATION_BATCH]))
                   for i in range(0, CALIBRATION_TEXTS, CALIBRATION_BATCH)]
    evaluation = [model.preprocess(list(evals.items[i:i + EVALUATION_BATCH]))
                  for i in range(0, EVALUATION_TEXTS, EVALUATION_BATCH)]
    batch = model.preprocess(list(evals.items[:args.batch]))
    reference = torch.cat([model(*x) for x in evaluation])

    def embed(run: Callable[..., Any]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(run(*x)) for x in evaluation])

    quantized: Dict[str, Any] = {}
    for recipe, how in (("w4a4-int", "MinMax"), (args.recipe, "format and exponent-bias search: the slow step")):
        say(f"bitfold.quantize(minilm, {recipe!r}) on {CALIBRATION_TEXTS} snippets ({how})")
        start = time.perf_counter()
        quantized[recipe] = bitfold.quantize(model.module, recipe, calibration, progress=False)
        print(f"    {recipe}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    fp4 = quantized[args.recipe]
    fp4.save(work / f"minilm-{args.recipe}", overwrite=True)

    say("exporting ONNX: fp32 with torch.onnx.export, W4A4-FP with bitfold.export_onnx (compressed)")
    fp32_onnx = work / "minilm-fp32.onnx"
    example = model.example_inputs(batch=2, seq=16)
    # The TorchScript exporter is the quick one; its tracer warnings about this model are
    # silenced, and the file is checked against PyTorch on another input shape below.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.module, example, str(fp32_onnx), input_names=list(model.input_names),
                          output_names=list(model.output_names), dynamo=False,
                          dynamic_axes={name: {0: "batch", 1: "seq"} for name in model.input_names})
    fp4_onnx = bitfold.export_onnx(fp4, work / f"minilm-{args.recipe}.onnx", example, mode="compressed",
                                   input_names=list(model.input_names), output_names=list(model.output_names))

    target = f"llvm -mcpu=native -num-cores={args.threads}"
    say(f"bitfold.compile(W4A4-FP, {target!r}) and export of the shared library")
    compiled = bitfold.compile(fp4, target)
    tvm_dir = compiled.export(work / f"minilm-{args.recipe}-tvm", overwrite=True)

    agree = Agreement()
    say(f"scoring every model on {EVALUATION_TEXTS} held-out snippets")
    rows: List[List[str]] = [["accuracy", "FP32 (PyTorch)", "cosine 1 (the reference)",
                              f"{EVALUATION_TEXTS} held-out snippets, calibration disjoint"]]
    simulated = {}
    for recipe, label in (("w4a4-int", "W4A4-INT"), (args.recipe, "W4A4-FP")):
        simulated[recipe] = embed(quantized[recipe])
        mean, low = cosine_to(reference, simulated[recipe])
        rows.append(["", f"{label} (bitfold, PyTorch simulation)", f"mean cosine {mean:.4f} (min {low:.4f})", ""])
    compiled_out = embed(compiled)
    mean, low = cosine_to(reference, compiled_out)
    _, agreement = cosine_to(simulated[args.recipe], compiled_out)
    difference = agree("TVM vs simulation (evaluation set)", compiled_out, simulated[args.recipe])
    rows.append(["", "W4A4-FP (bitfold TVM build)", f"mean cosine {mean:.4f} (min {low:.4f})",
                 f"vs simulation: min cosine {agreement:.5f}, max rel. diff. {difference}"])

    feeds = {name: x.numpy() for name, x in zip(model.input_names, batch)}
    batch_simulated = fp4(*batch).numpy()
    fp32_session = ort_session(fp32_onnx, args.threads)
    fp4_onnx_difference = agree("ONNX Runtime vs simulation", ort_session(fp4_onnx, args.threads).run(None, feeds)[0],
                                batch_simulated)
    memory = fp4.manifest()["memory"]
    quantized_fp32 = 4 * memory["quantized_weights"]
    stored = sum(sum(layer["bits"].values()) for layer in memory["layers"].values()) / 8
    float_params = sum(p.numel() * p.element_size() for p in model.module.parameters())
    rows += [
        ["size", "FP32 ONNX file", f"{megabytes(fp32_onnx):.1f} MB", f"{float_params / 1e6:.1f} MB of fp32 weights"],
        ["", "W4A4-FP compressed ONNX file", f"{megabytes(fp4_onnx):.1f} MB",
         f"in ONNX Runtime: max rel. diff. vs simulation {fp4_onnx_difference}"],
        ["", "W4A4-FP TVM model.so + params.bin", f"{megabytes(tvm_dir / 'model.so', tvm_dir / 'params.bin'):.1f} MB",
         ""],
        ["", "W4A4-FP quantized linears", f"{quantized_fp32 / 1e6:.1f} MB -> {stored / 1e6:.1f} MB",
         f"{memory['bits_per_weight']:.2f} bits/weight with scales; embeddings, norms stay fp32"],
    ]

    say(f"timing one batch of {args.batch} held-out snippets ({tuple(batch[0].shape)} tokens), "
        f"{args.warmup} warm-up + {args.repeats} runs per system")
    with torch.no_grad():
        expected = model(*batch).numpy()
    on_device = compiled.device_inputs(*batch)
    tvm_main, tvm_params = compiled.vm["main"], compiled.params
    systems = [
        ("torch fp32", lambda: model(*batch), expected, "PyTorch"),
        ("ONNX Runtime fp32", lambda: fp32_session.run(None, feeds)[0], expected, "PyTorch"),
        ("bitfold TVM W4A4-FP", lambda: tvm_main(*on_device, *tvm_params), batch_simulated, "simulation"),
    ]
    for i, (name, run, want, against) in enumerate(systems):
        out = run()
        got = out.numpy() if hasattr(out, "numpy") else out
        fastest, median = timed(run, args.warmup, args.repeats)
        rows.append(["latency" if i == 0 else "", name, f"{fastest:7.2f} ms min, {median:7.2f} ms median",
                     f"max rel. diff. vs {against} {agree(f'{name} vs {against}', got, want)}"])

    say("done")
    version = fp4.recipe["version"]
    print(f"\nbitfold demo: all-MiniLM-L6-v2, W4A4-FP (recipe {args.recipe} v{version}) vs W4A4-INT vs FP32 — "
          f"{args.threads} thread(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"total {say.elapsed():.0f} s")
    print(format_table(rows))
    if agree.beyond:
        print("\nbackends that disagree with their reference more than bitfold's tests allow:")
        print("\n".join(f"  {line}" for line in agree.beyond))
    if args.keep:
        print(f"\nfiles in {work}: the quantized model (minilm-{args.recipe}/), both ONNX files, the TVM build")


if __name__ == "__main__":
    main()
