"""`bitfold quantize`: a Python factory, an ONNX file from outside bitfold, and the error paths."""

import json
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from bitfold.api import QuantizedModel

from .conftest import FACTORY, HERE, run_cli
from .tiny_models import NormMLP, TinyAttention


def test_factory_model_is_saved_with_analysis(mlp_w8a8):
    assert {p.name for p in mlp_w8a8.iterdir()} == {
        "graph.json", "tensors.safetensors", "analysis.json", "example_inputs.safetensors"}
    q = QuantizedModel.load(mlp_w8a8)
    assert [r.layer for r in q.layers] == ["linear", "linear_1", "linear_2"]
    x = torch.randn(3, 32)
    with torch.no_grad():
        ref, out = NormMLP().eval()(x), q(x)
    assert float((out - ref).norm() / ref.norm()) < 0.05  # int8: close to float
    analysis = json.loads((mlp_w8a8 / "analysis.json").read_text())
    assert analysis["inputs"]["held_out"] and len(analysis["layers"]) == 3
    assert all(r["sensitivity_sqnr_db"] is not None for r in analysis["layers"])


def test_summary_table(capsys, mlp_data, tmp_path):
    code, out, err = run_cli(capsys, "quantize", FACTORY, "--recipe", "w4a16-int-g128", "--calib", mlp_data,
                             "-o", tmp_path / "q", "-q", "--no-sensitivity", "--layers-per-pass", "1")
    assert code == 0 and err == ""
    assert "quantized layers  3 linear: 3 × uint4/group128" in out
    assert "bits/weight with scales)" in out and "output vs float   SQNR" in out
    rows = out.split("most costly layers", 1)[1]
    assert all(name in rows for name in ("fc1.weight", "fc2.weight", "head.weight"))


def test_outside_onnx_is_quantized(outside_quantized):
    """An ONNX file written by torch.onnx.export of a model bitfold never saw."""
    out, stdout = outside_quantized
    assert "quantized layers  4 linear: 4 × e2m1/channel" in stdout
    q = QuantizedModel.load(out)
    x = torch.randn(3, 6, 24)
    with torch.no_grad():
        ref, got = TinyAttention().eval()(x), q(x)
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert got.shape == ref.shape
    assert 0 < float((got - ref).norm() / ref.norm()) < 0.5  # really quantized, still the same model


def _hardmax_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="first_relu"),
         helper.make_node("Hardmax", ["r"], ["y"], name="my_hardmax")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _error(capsys, *argv) -> str:
    """The one error line of a failing command (stage messages may precede it)."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(f"bitfold {argv[0]}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_user_errors_are_one_line(capsys, tmp_path, mlp_data, onnx_data):
    base = ["--recipe", "w8a8-int", "--calib", mlp_data, "-o", tmp_path / "out", "-q"]
    assert "no such ONNX file" in _error(capsys, "quantize", tmp_path / "missing.onnx", *base)
    assert "unknown model 'resnet9'" in _error(capsys, "quantize", "resnet9", *base)
    assert "unknown recipe 'w9a9'" in _error(capsys, "quantize", FACTORY, "--recipe", "w9a9",
                                             "--calib", mlp_data, "-o", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, "quantize", FACTORY, "--recipe", "w8a8-int", "--calib", empty, "-o", tmp_path / "o")
    assert "calibration data is empty" in err
    err = _error(capsys, "quantize", _hardmax_onnx(tmp_path / "hm.onnx"), "--recipe", "w8a8-int",
                 "--calib", onnx_data, "-o", tmp_path / "o")
    assert "my_hardmax" in err and "Hardmax" in err
    assert "no function 'nope'" in _error(capsys, "quantize", f"{HERE / 'tiny_models.py'}:nope", *base)
    assert "not a torch.nn.Module" in _error(capsys, "quantize", f"{HERE / 'tiny_models.py'}:not_a_module", *base)
    assert "cannot import module 'no_such_pkg.models'" in _error(capsys, "quantize", "no_such_pkg.models:build", *base)
    texts = tmp_path / "texts.txt"
    texts.write_text("a sentence\nanother one\n")
    err = _error(capsys, "quantize", FACTORY, "--recipe", "w8a8-int", "--calib", texts, "-o", tmp_path / "o")
    assert "has no bundled preprocessing" in err
    assert "no such file, folder or bundled data set" in _error(
        capsys, "quantize", FACTORY, "--recipe", "w8a8-int", "--calib", tmp_path / "nope", "-o", tmp_path / "o")
    assert "--layers-per-pass must be a positive" in _error(capsys, "quantize", FACTORY, *base, "--layers-per-pass", "0")
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(capsys, mlp_w8a8, mlp_data):
    before = (mlp_w8a8 / "graph.json").stat().st_mtime_ns
    err = _error(capsys, "quantize", FACTORY, "--recipe", "w8a8-int", "--calib", mlp_data, "-o", mlp_w8a8)
    assert "not empty; pass --overwrite" in err
    assert (mlp_w8a8 / "graph.json").stat().st_mtime_ns == before
