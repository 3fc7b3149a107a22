"""``bitfold quantize MODEL --recipe NAME --calib DATA -o OUT_DIR``.

Quantizes the model with :func:`bitfold.quantize` and saves it to OUT_DIR (``graph.json``,
``tensors.safetensors``, and one evaluation batch in ``example_inputs.safetensors``); then,
unless ``--no-analysis``, measures every quantized layer against the float model on
held-out inputs (:func:`bitfold.api.report.analyze`) into ``analysis.json``, which
``bitfold report`` renders. Prints a summary table at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bitfold.cli.artifact import save_example
from bitfold.cli.data import DATA_HELP, add_data_options, data_from_args
from bitfold.cli.errors import CLIError, one_line, user_error_types
from bitfold.cli.models import MODEL_HELP, resolve_model
from bitfold.cli.parsing import add_command
from bitfold.cli.tables import fmt_db, format_mix, format_table, human_bytes, weight_bytes

EXAMPLES = """\
examples:
  bitfold quantize minilm --recipe w4a4-fp --calib rotten-tomatoes -o /tmp/q
  bitfold quantize smollm2 --recipe w4a16-int-g128 --calib hamlet --samples 32 -o /tmp/smol
  bitfold quantize efficientnet-lite0 --recipe w8a8-int --calib fashion-mnist -o /tmp/eff
  bitfold quantize model.onnx --recipe my-recipe.yaml --calib inputs/ -o /tmp/q --overwrite
  bitfold quantize mypkg.models:build --recipe w8a8-int --calib inputs/ -o /tmp/q

DATA for an ONNX file or module:factory is a folder of .npy/.npz files, one model input per
file (np.savez(f, input_ids=..., attention_mask=...) for several inputs, in the model's order).
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "quantize", "quantize a model with a recipe and save the artifact",
                    __doc__, EXAMPLES)
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("-r", "--recipe", required=True, metavar="NAME|FILE.yaml",
                   help="a named recipe (see `bitfold recipes`) or a recipe YAML file")
    p.add_argument("-c", "--calib", required=True, metavar="DATA", help=DATA_HELP)
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="where to save the quantized model")
    add_data_options(p)
    p.add_argument("--no-analysis", action="store_true",
                   help="skip the per-layer analysis (then `bitfold report` needs --model and --calib)")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="analyze without the per-layer sensitivity runs (one model run per layer)")
    p.add_argument("--layers-per-pass", type=int, metavar="N",
                   help="layer-at-a-time calibration: calibrate and plan N linears per pass over the data "
                        "(bounded memory for large models; same result, more passes)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    p.add_argument("-v", "--verbose", action="store_true", help="print the full per-layer table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or stage messages")
    p.set_defaults(run=run)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise CLIError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CLIError(f"{path}: exists and is not empty; pass --overwrite to replace it")


def _summary(args, source, q, analysis, out: Path, seconds: float) -> str:
    as_float, stored, bits = weight_bytes(q.graph_module)
    lines = [
        f"bitfold quantize: {source.label} with {q.recipe.get('name')} (v{q.recipe.get('version')}) "
        f"-> {out} in {seconds:.1f} s",
    ]
    facts = [
        ["quantized layers", f"{len(q.layers)} linear: {format_mix(q.layers)}"],
        ["kept float", f"{len(q.kept_float)} linear(s); `bitfold inspect {out}` says why"],
        ["layer weights", f"{human_bytes(as_float)} as float32 -> {human_bytes(stored)} stored "
                          f"({bits:.2f} bits/weight with scales)"],
    ]
    if analysis is not None:
        held = "held-out" if analysis.inputs["held_out"] else "calibration"
        facts.append(["output vs float", f"SQNR {fmt_db(analysis.output['sqnr_db'])} dB, cosine "
                                         f"{analysis.output['cosine']:.5f} on {analysis.inputs['items']} {held} "
                                         f"batch(es) of {analysis.inputs['description']}"])
    lines += format_table(["", ""], facts)[2:]
    if analysis is not None:
        def cost(r):
            return r.sensitivity_sqnr_db if r.sensitivity_sqnr_db is not None else r.output_sqnr_db
        ranked = sorted(analysis.layers, key=cost)[: None if args.verbose else 5]
        title = "per-layer error" if args.verbose else "most costly layers"
        lines += ["", f"{title} (SQNR in dB vs float; sensitivity: model output with only that layer quantized):"]
        lines += format_table(
            ["layer", "weight", "format", "act", "sensitivity", "layer output", "shift k"],
            [[r.layer, r.weight_name, f"{r.weight_format}/{r.granularity}", r.act_format or "float",
              fmt_db(r.sensitivity_sqnr_db), fmt_db(r.output_sqnr_db),
              "" if r.shift_range is None else f"{r.shift_range[0]}..{r.shift_range[1]}"] for r in ranked])
        lines += ["", f"next: bitfold report {out} -o report.html"]
    elif args.verbose:
        lines += ["", q.report()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bitfold.recipes import load_recipe

    start = time.perf_counter()
    recipe = load_recipe(args.recipe)
    out = Path(args.output)
    _check_output(out, args.overwrite)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    source = resolve_model(args.model)
    data = data_from_args(args.calib, source, args)

    import bitfold

    say(f"quantizing {source.label} with {recipe.name}: capture, calibration on {len(data.items)} batch(es), "
        f"search")
    if args.layers_per_pass is not None and args.layers_per_pass < 1:
        raise CLIError(f"--layers-per-pass must be a positive number of layers, got {args.layers_per_pass}")
    q = bitfold.quantize(source.model, recipe, data.items, progress=not args.quiet,
                         layers_per_pass=args.layers_per_pass)
    q.save(out, overwrite=args.overwrite)
    save_example(str(out), data.evaluation[0])
    analysis = None
    if not args.no_analysis:
        from bitfold.api.report import analyze, float_reference

        say(f"analyzing {len(q.layers)} layers against the float model on {len(data.evaluation)} batch(es)")
        try:
            reference = float_reference(source.model, data.items, recipe.calibration_samples)
            analysis = analyze(reference, q, data.evaluation, sensitivity=not args.no_sensitivity,
                               progress=not args.quiet, inputs_description=data.description,
                               held_out=data.held_out, source=source.label)
        except user_error_types() as err:
            raise CLIError(f"the quantized model is saved in {out}, but its analysis failed: {one_line(err)}") from err
        analysis.save(out)
    print(_summary(args, source, q, analysis, out, time.perf_counter() - start))
    return 0
