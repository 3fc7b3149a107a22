"""``bitfold bench [NAME ...]``: run the benchmarks in the repository's ``benchmarks/`` folder.

Each benchmark is a script (``benchmarks/NAME.py``) that measures speed or accuracy next
to its peers and prints its own table; this command lists them (``--list``) and runs the
named ones, or all, one after the other with this Python, passing ``--args`` on to each.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict

from bitfold.cli.errors import CLIError
from bitfold.cli.parsing import add_command
from bitfold.cli.tables import format_table

EXAMPLES = """\
examples:
  bitfold bench --list
  bitfold bench formats --args "--numel 1048576"
  bitfold bench                                   # every benchmark, in name order
"""


def default_folder() -> Path:
    """``benchmarks/`` next to the ``bitfold`` package (a source checkout or editable install)."""
    import bitfold

    return Path(bitfold.__file__).resolve().parent.parent / "benchmarks"


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "bench", "run the speed/accuracy benchmarks", __doc__, EXAMPLES)
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and what each measures")
    p.add_argument("--args", default="", metavar="ARGS", help="arguments passed to each benchmark script")
    p.add_argument("--dir", type=Path, default=None, metavar="FOLDER",
                   help="the benchmarks folder (default: benchmarks/ of this bitfold checkout)")
    p.set_defaults(run=run)


def find_benchmarks(folder: Path) -> Dict[str, str]:
    """``name -> first line of its docstring`` for every ``*.py`` script in ``folder`` (read, not run)."""
    if not folder.is_dir():
        raise CLIError(f"{folder}: no benchmarks folder (bitfold bench runs from a source checkout; "
                       "pass --dir to point at one)")
    found = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError as err:
            raise CLIError(f"{path}: not valid Python ({err.msg}, line {err.lineno})") from err
        found[path.stem] = doc.strip().split("\n", 1)[0]
    return found


def run(args: argparse.Namespace) -> int:
    folder = args.dir or default_folder()
    benchmarks = find_benchmarks(folder)
    if args.list:
        print("\n".join(format_table(["benchmark", "measures"], sorted(benchmarks.items()), indent="")))
        return 0
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        raise CLIError(f"unknown benchmark {', '.join(map(repr, unknown))}; known: {', '.join(benchmarks)}")
    extra = shlex.split(args.args)
    for name in args.names or list(benchmarks):
        command = [sys.executable, str(folder / f"{name}.py"), *extra]
        print(f"== bitfold bench {name}: {' '.join(shlex.quote(c) for c in command)}", flush=True)
        code = subprocess.run(command, cwd=folder.parent).returncode
        if code != 0:
            raise CLIError(f"benchmark {name} exited with status {code}")
    return 0
