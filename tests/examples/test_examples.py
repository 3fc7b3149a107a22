"""The examples stay runnable: the fast one runs here, and every one says how to run it."""

import ast
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.slow
def test_custom_pass_rewrites_refuses_with_a_reason_and_keeps_the_outputs(capsys):
    runpy.run_path(str(EXAMPLES / "custom_pass.py"), run_name="__main__")
    out = capsys.readouterr().out
    captured, after = (line for line in out.splitlines() if line.startswith(("captured:", "after passes:")))
    assert "'sigmoid.default': 2" in captured and "'mul.Tensor': 3" in captured
    # x * sigmoid(x) became silu, which then fused into the first linear; quick GELU stayed.
    assert "'fused_linear.default': 1" in after and "'sigmoid.default': 1" in after and "'mul.Tensor': 2" in after
    assert "silu_from_sigmoid_gate changed the graph" in out
    assert "sigmoid(1.702·x): Swish-β with β ≠ 1 is not SiLU" in out
    assert out.rstrip().endswith("outputs match the original model: True")


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_docstring_says_how_to_run_it(script):
    doc = ast.get_docstring(ast.parse((EXAMPLES / script).read_text(encoding="utf-8"))) or ""
    assert f"python examples/{script}" in doc, f"{script}: its docstring should show the command that runs it"
