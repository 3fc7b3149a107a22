"""``bitfold compile OUT_DIR --target llvm|cuda -o COMPILED``: TVM-compile a quantized model.

Lowers the quantized graph in OUT_DIR with :func:`bitfold.compile` for the target, exports
the result to COMPILED (a folder: ``model.so``, ``params.bin``, ``model.json``; load it
with ``bitfold.backends.tvm.CompiledModel.load``) and runs it once on the example input
``bitfold quantize`` saved, reporting its largest difference from the PyTorch simulation
(for a GPU target, where this machine has that GPU).
"""

from __future__ import annotations

import argparse

from bitfold.cli.parsing import add_command

EXAMPLES = """\
examples:
  bitfold compile /tmp/q --target llvm -o /tmp/q-llvm
  bitfold compile /tmp/q --target "llvm -mcpu=native" -o /tmp/q-native
  bitfold compile /tmp/q --target cuda -o /tmp/q-cuda
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "compile", "compile a quantized model with TVM for a CPU or GPU target",
                    __doc__, EXAMPLES)
    p.add_argument("directory", metavar="OUT_DIR", help="an OUT_DIR of `bitfold quantize`")
    p.add_argument("-t", "--target", default="llvm",
                   help='a TVM target: "llvm" (default), "llvm -mcpu=native", "cuda"')
    p.add_argument("-o", "--output", required=True, metavar="COMPILED",
                   help="the folder to write the compiled model to (model.so, params.bin, model.json)")
    p.add_argument("--overwrite", action="store_true", help="replace COMPILED if it exists")
    p.add_argument("--no-check", action="store_true", help="do not compare with the PyTorch simulation")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bitfold.cli.artifact import backend_inputs

    q, out, example = backend_inputs(args.directory, args.output, args.overwrite)
    from bitfold.backends.tvm import compile as compile_model
    from bitfold.cli.backend_check import max_relative_error

    compiled = compile_model(q, target=args.target, example_inputs=example)
    compiled.export(out, overwrite=args.overwrite)
    line = f"wrote {out}/ (model.so, params.bin, model.json) for target {args.target!r}"
    if example is not None and not args.no_check:
        if compiled.device.exist:
            error = max_relative_error(compiled, q, example)
            line += f"; max relative difference from the PyTorch simulation on the saved example: {error:.2e}"
        else:
            line += f"; not checked: this machine has no {compiled.target.kind.name} device"
    print(line)
    return 0
