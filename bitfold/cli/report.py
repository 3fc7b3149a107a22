"""``bitfold report OUT_DIR -o report.html``: the per-layer report as one HTML file.

Renders the ``analysis.json`` that ``bitfold quantize`` saved in OUT_DIR: model error vs
float, per-layer error and sensitivity (which layer costs most), what stayed float and
why, weight and activation histograms against the format's grid, and LLM-FP4's exponent
shifts. ``--compare`` adds other recipes' OUT_DIRs (same model, same data) to a chart of
accuracy per recipe; ``--accuracy`` adds a table measured elsewhere. For a model saved
without analysis (``--no-analysis``, or ``QuantizedModel.save``), give ``--model`` and
``--calib`` (and the data options used for quantizing) and the analysis is computed now.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bitfold.cli.data import DATA_HELP, add_data_options, data_from_args
from bitfold.cli.errors import CLIError
from bitfold.cli.models import MODEL_HELP, resolve_model
from bitfold.cli.parsing import add_command

EXAMPLES = """\
examples:
  bitfold report /tmp/q -o report.html
  bitfold report /tmp/q-w4a4-fp --compare /tmp/q-w4a4-int /tmp/q-w8a8-int -o report.html
  bitfold report /tmp/q --accuracy accuracy.json -o report.html
  bitfold report /tmp/q --model minilm --calib rotten-tomatoes -o report.html

accuracy.json: {"metric": "top-1 agreement with fp32", "results": {"w4a4-fp": 0.91, "w4a4-int": 0.62}}
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "report", "write the per-layer HTML report of a quantized model", __doc__, EXAMPLES)
    p.add_argument("directory", metavar="OUT_DIR", help="an OUT_DIR of `bitfold quantize`")
    p.add_argument("-o", "--output", required=True, metavar="report.html", help="the HTML file to write")
    p.add_argument("--compare", nargs="+", default=[], metavar="OUT_DIR",
                   help="other recipes' OUT_DIRs of the same model and data, for the accuracy-per-recipe chart")
    p.add_argument("--accuracy", metavar="FILE.json",
                   help='a {"metric": ..., "results": {recipe: value}} table to chart as well')
    p.add_argument("--max-histograms", type=int, default=48, metavar="N",
                   help="histograms for the N most costly layers at most (default 48)")
    p.add_argument("--model", metavar="MODEL", help=f"analyze now against this float model: {MODEL_HELP}")
    p.add_argument("--calib", metavar="DATA", help=f"with --model: the calibration data used: {DATA_HELP}")
    add_data_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _analysis(directory: str):
    from bitfold.api.report import ANALYSIS_FILE, Analysis
    from bitfold.cli.artifact import load_quantized

    path = Path(directory)
    if not (path / ANALYSIS_FILE).is_file():
        load_quantized(directory)  # a clear error if it is not a quantized model at all
        raise CLIError(f"{directory}: has no {ANALYSIS_FILE} (quantized with --no-analysis?); "
                       "pass --model and --calib to analyze it now")
    return Analysis.load(path)


def _analyze_now(args: argparse.Namespace):
    from bitfold.api.report import analyze, float_reference
    from bitfold.cli.artifact import load_quantized

    if args.calib is None:
        raise CLIError("--model needs --calib: the calibration data the model was quantized with")
    q = load_quantized(args.directory)
    source = resolve_model(args.model)
    data = data_from_args(args.calib, source, args)
    reference = float_reference(source.model, data.items, int(q.recipe["calibration_samples"]))
    return analyze(reference, q, data.evaluation, progress=not args.quiet, inputs_description=data.description,
                   held_out=data.held_out, source=source.label)


def _accuracy_table(path: str):
    from bitfold.api.report import check_accuracy_table

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CLIError(f"{path}: not valid JSON ({err})") from err
    return check_accuracy_table(data, path)


def run(args: argparse.Namespace) -> int:
    from bitfold.api.report import write_html

    analysis = _analyze_now(args) if args.model is not None else _analysis(args.directory)
    comparisons = [_analysis(d) for d in args.compare]
    accuracy = _accuracy_table(args.accuracy) if args.accuracy is not None else None
    if not args.quiet:
        print(f"rendering {len(analysis.layers)} layers", file=sys.stderr)
    path, size = write_html(analysis, args.output, comparisons, accuracy, args.max_histograms)
    print(f"wrote {path} ({size / 1e6:.1f} MB): {len(analysis.layers)} layers, model output SQNR "
          f"{analysis.output['sqnr_db']:.1f} dB vs float")
    return 0
