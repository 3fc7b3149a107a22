"""``bitfold``: the command line. One subcommand per module of :mod:`bitfold.cli`.

Each subcommand module has ``add_parser(subparsers)``, which registers its arguments, help
and examples and sets ``run``, the function that does the work and returns the exit code.
:func:`main` parses, runs, and turns user errors into one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from bitfold import __version__
from bitfold.cli import bench, compile, export, inspect, quantize, recipes, report
from bitfold.cli.errors import one_line, user_error_types

COMMANDS = (quantize, export, compile, inspect, report, bench, recipes)

EXAMPLES = """\
examples:
  bitfold recipes
  bitfold quantize minilm --recipe w4a4-fp --calib rotten-tomatoes -o /tmp/q
  bitfold inspect /tmp/q
  bitfold report /tmp/q -o /tmp/report.html
  bitfold export /tmp/q --onnx /tmp/q.onnx
  bitfold compile /tmp/q --target llvm -o /tmp/q-llvm
  bitfold quantize model.onnx --recipe w8a8-int --calib inputs/ -o /tmp/q2

Run `bitfold COMMAND --help` for a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitfold",
        description="bitfold: a low-bit quantization compiler for PyTorch and ONNX models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bitfold {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"bitfold {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`bitfold inspect … | head`): not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as err:  # noqa: BLE001 - every error becomes one line unless --debug
        if args.debug:
            raise
        if isinstance(err, user_error_types()):
            print(f"bitfold {args.command}: error: {one_line(err)}", file=sys.stderr)
            return 1
        print(f"bitfold {args.command}: internal error ({type(err).__name__}): {one_line(err)} "
              "(run with --debug for the traceback, and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
