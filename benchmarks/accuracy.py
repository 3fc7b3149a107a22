"""Accuracy of bitfold's recipes on real models: FP32 against every recipe, one table.

Each model is quantized with :func:`bitfold.quantize` under each recipe and measured on
held-out data (calibration and evaluation are disjoint; each task asserts it):

* ``minilm`` (all-MiniLM-L6-v2): mean / min cosine between quantized and FP32 sentence
  embeddings of held-out Rotten Tomatoes snippets, and the accuracy of a logistic-regression
  probe trained on FP32 embeddings of other snippets; 128 calibration snippets;
* ``smollm2`` (SmolLM2-135M): perplexity on 512-token windows of Hamlet and of news articles,
  and the mean KL divergence of next-token distributions from FP32; 32 calibration sequences;
* ``efficientnet-lite0``: top-1 agreement with FP32 on upsampled Fashion-MNIST images;
* ``fmnist-cnn``: a small CNN trained here on Fashion-MNIST, labelled top-1 accuracy.

Next to each model's metrics stand the stored bits per quantized weight (codes, cluster ids,
scales and zero points, from the quantized model's manifest), so recipes compare at equal
memory, and the wall time of ``bitfold.quantize``. Recipes are names or YAML paths; ``fp32``
is the float model. ``--preset llmfp4`` / ``--preset splitquant`` name the recipe lists of
the LLM-FP4 and SplitQuant comparisons. The JSON holds every number and the run's settings,
and is rewritten after every measurement.

    python benchmarks/accuracy.py --models minilm,smollm2 \\
        --recipes fp32,w8a8-fp,w4a8-fp,w4a4-fp,w4a4-int,w4a4-int-smooth --json out.json
    python benchmarks/accuracy.py --models minilm,smollm2,fmnist-cnn --preset splitquant --json split.json
    python benchmarks/accuracy.py --models fmnist-cnn --recipes fp32,w4a4-int --cache /tmp/acc  # reuse models
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import bitfold  # noqa: E402
from bitfold import zoo  # noqa: E402
from bitfold.api import QuantizedModel, quantize  # noqa: E402  (all now: others may edit bitfold while this runs)
from bitfold.recipes import Recipe, load_recipe  # noqa: E402

FP32 = "fp32"
PRESETS = {
    "llmfp4": (FP32, "w8a8-fp", "w4a8-fp", "w4a4-fp", "w4a4-fp-rotated", "w4a4-nvfp4", "w4a4-nvfp4-llm", "w4a4-mxfp4",
               "w4a4-fp-paper", "w4a4-fp-fpq", "w4a4-int", "w4a4-int-smooth"),
    "splitquant": (FP32, "w2a16-int", "w2a16-int-split", "w3a16-int", "w3a16-int-split", "w4a16-int"),
}
MODELS = ("minilm", "smollm2", "efficientnet-lite0", "fmnist-cnn")
BITFOLD_ROOT = Path(bitfold.__file__).resolve().parent


def recipe_list(recipes: str, preset: Optional[str]) -> List[str]:
    """The preset's recipes, then those of ``--recipes`` (comma-separated), each once."""
    names = list(PRESETS[preset]) if preset else []
    names += [r.strip() for r in recipes.split(",") if r.strip()]
    return list(dict.fromkeys(names))


def build_task(name: str, args: argparse.Namespace):
    """The :class:`~accuracy_tasks.task.Task` of one model, sized by the command line."""
    if name == "minilm":
        from accuracy_tasks import minilm

        return minilm.build(n_test=args.minilm_test, seed=args.seed)
    if name == "smollm2":
        from accuracy_tasks import smollm2

        return smollm2.build(eval_windows=args.eval_windows, calib_length=args.calib_length, seed=args.seed)
    if name == "efficientnet-lite0":
        from accuracy_tasks import efficientnet

        return efficientnet.build(n_eval=args.images, seed=args.seed)
    from accuracy_tasks import fmnist_cnn

    return fmnist_cnn.build(args.cache / "fmnist-cnn", epochs=args.fmnist_epochs, n_train=args.fmnist_train,
                            seed=args.seed)


# --------------------------------------------------------------------------- quantized-model cache


def source_digest() -> str:
    """SHA-256 of bitfold's own source and recipe files: a cached quantized model is reused only
    while the code that made it is unchanged."""
    h = hashlib.sha256()
    for path in sorted([*BITFOLD_ROOT.rglob("*.py"), *BITFOLD_ROOT.rglob("*.yaml")]):
        h.update(str(path.relative_to(BITFOLD_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_entry(cache: Path, task_name: str, task_fingerprint: str, recipe: Recipe, digest: str) -> Path:
    described = {k: v for k, v in recipe.describe().items() if k != "source"}
    key = hashlib.sha256(json.dumps([task_fingerprint, described, digest], sort_keys=True).encode()).hexdigest()
    return cache / "quantized" / f"{task_name}-{recipe.name}-{key[:16]}"


def quantized_model(task, recipe: Recipe, entry: Optional[Path]) -> Tuple[Any, float, bool]:
    """``(model, quantize seconds, from cache)``: loaded from ``entry`` if it holds one, else
    quantized now (and saved there). A cached model reports the time its quantization took."""
    if entry is not None and (entry / "graph.json").is_file():
        model = QuantizedModel.load(entry)
        return model, float(model.info["wall_seconds"]), True
    start = time.perf_counter()
    model = quantize(task.module, recipe, task.calibration, progress=False)
    seconds = time.perf_counter() - start
    model.info["wall_seconds"] = seconds
    if entry is not None:
        model.save(entry)
    return model, seconds, False


# --------------------------------------------------------------------------- measuring


def _clock(start: float) -> str:
    return str(datetime.timedelta(seconds=round(time.perf_counter() - start)))


def measure_recipe(task, recipe: Optional[Recipe], entry: Optional[Path]) -> Dict[str, Any]:
    """One row: the task's metrics for ``recipe`` (``None``: the float model), plus memory and time."""
    if recipe is None:
        start = time.perf_counter()
        metrics = task.evaluate(task.module)
        return {**metrics, "bits_per_weight": 32.0, "eval_seconds": round(time.perf_counter() - start, 1)}
    model, seconds, cached = quantized_model(task, recipe, entry)
    start = time.perf_counter()
    metrics = task.evaluate(model)
    memory = model.manifest()["memory"]
    return {
        **metrics, "bits_per_weight": memory["bits_per_weight"], "quantized_weights": memory["quantized_weights"],
        "quantized_share": round(memory["quantized_weights"] / task.parameter_count(), 4),
        "layers_quantized": len(model.layers), "linears_kept_float": len(model.kept_float),
        "calibration_items": model.info.get("calibration_items"), "quantize_seconds": round(seconds, 1),
        "from_cache": cached, "eval_seconds": round(time.perf_counter() - start, 1),
    }


def run_model(name: str, labels: Sequence[str], recipes: Dict[str, Optional[Recipe]], args: argparse.Namespace,
              result: Dict[str, Any], save: Callable[[], None], clock: float) -> bool:
    """Measure every recipe on one model into ``result["models"][name]``; False if any failed."""
    start = time.perf_counter()
    print(f"[{_clock(clock)}] {name}: loading the model and data, computing FP32 references", flush=True)
    task = build_task(name, args)
    fingerprint = task.fingerprint() if args.cache_quantized else ""
    entry_of = (lambda r: cache_entry(args.cache, name, fingerprint, r, args.digest)) if args.cache_quantized \
        else (lambda r: None)
    block = result["models"][name] = {
        "settings": task.settings, "run_info": task.run_info, "notes": task.notes, "parameters": task.parameter_count(),
        "metrics": [m.__dict__ for m in task.metrics], "setup_seconds": round(time.perf_counter() - start, 1),
        "rows": {}}
    print(f"[{_clock(clock)}] {name}: ready in {block['setup_seconds']:.0f} s", flush=True)
    ok = True
    for label in labels:
        recipe = recipes[label]
        try:
            row = measure_recipe(task, recipe, None if recipe is None else entry_of(recipe))
        except Exception as err:  # one recipe failing must not hide the others' numbers
            ok = False
            row = {"error": f"{type(err).__name__}: {err}"}
            traceback.print_exc()
        block["rows"][label] = row
        save()
        shown = "  ".join(f"{m.label} {row[m.key]:.{m.digits}f}" for m in task.metrics if m.key in row)
        timing = (f"quantize {row['quantize_seconds']:.1f} s{' (cached)' if row['from_cache'] else ''}, "
                  if "quantize_seconds" in row else "")
        status = row.get("error") or (f"{shown}  {row['bits_per_weight']:.2f} bits/w  ({timing}"
                                      f"evaluate {row['eval_seconds']:.1f} s)")
        print(f"[{_clock(clock)}] {name} {label}: {status}", flush=True)
    shares = sorted({row["quantized_share"] for row in block["rows"].values() if "quantized_share" in row})
    if shares:
        block["notes"].append(f"{name}: the quantized layers hold {', '.join(f'{s:.1%}' for s in shares)} of its "
                              f"{block['parameters']:,} parameters (the layers each recipe's "
                              "`layers` names; the rest stays float)")
    return ok


# --------------------------------------------------------------------------- output


def markdown_table(result: Dict[str, Any], labels: Sequence[str]) -> List[str]:
    """One Markdown table: a row per recipe; per model its metrics, bits/weight, quantize seconds."""
    header, columns = ["recipe"], []
    for name, block in result["models"].items():
        for m in block["metrics"]:
            header.append(f"{name} {m['label']}")
            columns.append((name, m["key"], m["digits"]))
        header += [f"{name} bits/w", f"{name} quant s"]
        columns += [(name, "bits_per_weight", 2), (name, "quantize_seconds", 0)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label in labels:
        cells = [label]
        for name, key, digits in columns:
            row = result["models"][name]["rows"].get(label, {})
            if "error" in row:
                cells.append("failed")
            elif key not in row:
                cells.append("–")
            else:
                cached = "*" if key == "quantize_seconds" and row.get("from_cache") else ""
                cells.append(f"{row[key]:.{digits}f}{cached}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
        json.dump(data, fh, indent=1)
    os.replace(fh.name, path)


def _load_average() -> List[float]:
    """1, 5 and 15 minute load averages: timings on a shared machine mean little without them."""
    return [round(x, 2) for x in os.getloadavg()]


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BITFOLD_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm,smollm2", help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--recipes", default="", help="comma-separated recipe names or YAML paths; fp32 = the float model")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="; ".join(f"{k}: {','.join(v)}" for k, v in PRESETS.items()))
    p.add_argument("--json", type=Path, help="write every number and the run's settings here")
    p.add_argument("--cache", type=Path, default=None,
                   help="reuse quantized models saved here (keyed by task, recipe and bitfold's source), and keep "
                        "the trained Fashion-MNIST CNN here (default for the CNN: bitfold's cache folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of every data split (default 0)")
    p.add_argument("--minilm-test", type=int, default=1000, help="held-out Rotten Tomatoes snippets (default 1000)")
    p.add_argument("--eval-windows", type=int, default=4,
                   help="smollm2: 512-token evaluation windows per corpus (default 4: 2,044 predicted tokens each)")
    p.add_argument("--calib-length", type=int, default=128,
                   help="smollm2: tokens per calibration sequence (default 128; 32 sequences)")
    p.add_argument("--images", type=int, default=256, help="efficientnet-lite0: held-out images (default 256)")
    p.add_argument("--fmnist-epochs", type=int, default=2, help="fmnist-cnn: training epochs (default 2)")
    p.add_argument("--fmnist-train", type=int, default=20000,
                   help="fmnist-cnn: training images (default 20000; 0: all 59,744 not held out for calibration)")
    args = p.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.model_list if m not in MODELS]
    if unknown or not args.model_list:
        p.error(f"unknown or no model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    args.labels = recipe_list(args.recipes, args.preset)
    if not args.labels:
        p.error("give --recipes and/or --preset")
    args.cache_quantized = args.cache is not None
    args.cache = args.cache or zoo.cache_dir() / "benchmarks" / "accuracy"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    recipes = {label: None if label == FP32 else load_recipe(label) for label in args.labels}
    args.digest = source_digest()
    torch.manual_seed(args.seed)
    clock = time.perf_counter()
    result: Dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "settings": {"models": args.model_list, "recipes": args.labels, "seed": args.seed,
                     "cache": str(args.cache) if args.cache_quantized else None,
                     "recipe_files": {k: r.source for k, r in recipes.items() if r is not None},
                     "recipe_calibration_samples": {k: r.calibration_samples for k, r in recipes.items() if r}},
        "environment": {"bitfold_version": bitfold.__version__, "git_commit": _git_commit(),
                        "bitfold_source_sha256": args.digest, "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "machine": platform.machine(), "python": platform.python_version(),
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "load_average_start": _load_average()},
        "models": {},
    }
    print(f"load average {result['environment']['load_average_start']}, torch threads {torch.get_num_threads()}, "
          f"recipes: {', '.join(args.labels)}", flush=True)
    save = (lambda: write_json(args.json, result)) if args.json else (lambda: None)
    ok = True
    for name in args.model_list:
        ok = run_model(name, args.labels, recipes, args, result, save, clock) and ok
    env = result["environment"]
    env["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    env["load_average_end"] = _load_average()
    env["wall_seconds"] = round(time.perf_counter() - clock, 1)
    table = markdown_table(result, args.labels)
    result["table"] = table
    save()
    print("\n" + "\n".join(table))
    if any(r.get("from_cache") for b in result["models"].values() for r in b["rows"].values()):
        print("* quantized model loaded from --cache; the time is that of its original quantization")
    for block in result["models"].values():
        for note in block["notes"]:
            print(f"- {note}")
    print(f"wall time {env['wall_seconds']:.0f} s; load average {env['load_average_start']} at the start, "
          f"{env['load_average_end']} at the end; bitfold {env['bitfold_version']} ({env['git_commit']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
