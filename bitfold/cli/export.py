"""``bitfold export OUT_DIR --onnx model.onnx [--mode simulate|compressed]``: write an ONNX file.

Exports the quantized model in OUT_DIR with :func:`bitfold.export_onnx`: ``simulate`` keeps
every quantize point in standard ONNX ops, with the weights already on their grids;
``compressed`` stores the weights as low-bit codes (``MatMulNBits`` for INT4). The example
input ``bitfold quantize`` saved fixes the input signature; the file is then run in ONNX
Runtime on it, and its largest difference from the PyTorch simulation is reported.
"""

from __future__ import annotations

import argparse

from bitfold.cli.parsing import add_command

EXAMPLES = """\
examples:
  bitfold export /tmp/q --onnx /tmp/q.onnx
  bitfold export /tmp/q --onnx /tmp/q-small.onnx --mode compressed
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "export", "export a quantized model to ONNX", __doc__, EXAMPLES)
    p.add_argument("directory", metavar="OUT_DIR", help="an OUT_DIR of `bitfold quantize`")
    p.add_argument("--onnx", required=True, metavar="model.onnx", help="the ONNX file to write")
    p.add_argument("--mode", choices=("simulate", "compressed"), default="simulate",
                   help="simulate: every quantize point in standard ops; compressed: low-bit weight codes")
    p.add_argument("--overwrite", action="store_true", help="replace the ONNX file if it exists")
    p.add_argument("--no-check", action="store_true", help="do not run the file in ONNX Runtime")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bitfold.cli.artifact import backend_inputs

    q, out, example = backend_inputs(args.directory, args.onnx, args.overwrite)
    from bitfold import export_onnx
    from bitfold.backends.onnx import ort_session
    from bitfold.backends.onnx.runtime import run as ort_run

    export_onnx(q, out, example, mode=args.mode)
    line = f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, mode {args.mode})"
    if example is not None and not args.no_check:
        from bitfold.cli.backend_check import max_relative_error

        session = ort_session(out)
        error = max_relative_error(lambda *x: ort_run(session, x), q, example)
        line += f"; max relative difference from the PyTorch simulation in ONNX Runtime: {error:.2e}"
    print(line)
    return 0
