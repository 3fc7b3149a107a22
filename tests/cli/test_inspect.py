"""`bitfold inspect`: a model's layers and float reasons; a quantized OUT_DIR's chosen formats."""

import pytest

from .conftest import FACTORY, HERE, run_cli


def test_inspect_model_with_recipe(capsys):
    code, out, _ = run_cli(capsys, "inspect", FACTORY, "--recipe", "w8a8-int")
    assert code == 0
    assert "quantizable layers (3):" in out
    assert "normalization stays float" in out and "elementwise activation" in out
    assert "recipe w8a8-int: quantizes 3 linear/conv layer(s), keeps 0 float" in out


def test_inspect_outside_onnx_names_declined_rewrites(capsys, outside_onnx):
    code, out, _ = run_cli(capsys, "inspect", outside_onnx, "--recipe", "w8a8-int")
    assert code == 0
    assert "act_matmul" in out and "softmax stays float" in out
    assert "MatMulToLinear: the right operand is computed at run time" in out
    # The attention matmuls are quantizable in principle, but no recipe quantizes them yet: said so.
    assert "quantizes 4 linear/conv layer(s), keeps 0 float; 2 other quantizable layer(s) stay float" in out
    assert out.count("(act_matmul): bitfold.quantize does not quantize act_matmul layers yet") == 2


def test_inspect_factory_without_example_needs_data(capsys, mlp_data):
    target = f"{HERE / 'tiny_models.py'}:build_without_example"
    code, _, err = run_cli(capsys, "inspect", target)
    assert code == 1 and "give --calib DATA" in err and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "inspect", target, "--calib", mlp_data)
    assert code == 0 and "quantizable layers (3):" in out


@pytest.mark.slow
def test_inspect_quantized_dirs(capsys, mlp_w8a8, mlp_w4a4):
    code, out, _ = run_cli(capsys, "inspect", mlp_w8a8)
    assert code == 0
    table = out.split("quantized layers (3)", 1)[1].split("layers kept float", 1)[0]
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("linear")]
    assert [r[0] for r in rows] == ["linear", "linear_1", "linear_2"]
    assert all(r[2] == "int8/channel" and r[3] == "scale" and r[5] == "int8" and r[6] == "scale" for r in rows)
    code, out, _ = run_cli(capsys, "inspect", mlp_w4a4)
    assert code == 0 and "e2m1/channel  bias " in out  # FP scales shown as exponent biases


def test_inspect_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "inspect", tmp_path)
    assert code == 1 and "not a quantized model (no graph.json)" in err
    code, _, err = run_cli(capsys, "inspect", tmp_path / "model.onnx")
    assert code == 1 and "no such ONNX file" in err
