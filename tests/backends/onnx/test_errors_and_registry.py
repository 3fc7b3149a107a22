"""Bad input gets a clear error naming the node; a failed export writes nothing; ops can be added."""

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bitfold.backends.onnx import OnnxExportError, export_onnx, ort_session, register_lowering, registered_ops
from bitfold.backends.onnx.lowering import ExportOptions, lower_placeholders
from bitfold.backends.onnx.runtime import run


@torch.library.custom_op("bitfold::onnx_test_untranslated", mutates_args=())
def untranslated(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@untranslated.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("onnx_test::no_onnx_form", mutates_args=())
def no_onnx_form(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@no_onnx_form.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("bitfold::onnx_test_scale", mutates_args=())
def scale_op(x: torch.Tensor, factor: float, fail: bool = False) -> torch.Tensor:
    return x * factor


@scale_op.register_fake
def _(x, factor, fail=False):
    return torch.empty_like(x)


@register_lowering(torch.ops.bitfold.onnx_test_scale.default, output=lambda x, *a, **k: (x.shape, x.dtype))
def lower_scale(node, ctx):
    if node.attrs.get("fail"):
        raise ctx.fail(node, "refusing on purpose")
    em = ctx.emitter(node)
    ctx.finish(node, em, em.op("Mul", node.input(0), em.scalar(node.attrs["factor"], "factor")))


class Calls(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(torch.relu(x))


def graph(fn):
    return torch.fx.symbolic_trace(Calls(fn))


X = (torch.randn(2, 4),)


def test_a_bitfold_op_without_translation_is_named(tmp_path):
    with pytest.raises(OnnxExportError, match=r"node 'onnx_test_untranslated'.*bitfold::onnx_test_untranslated.*"
                                              r"register_lowering"):
        export_onnx(graph(torch.ops.bitfold.onnx_test_untranslated), tmp_path / "m.onnx", X)
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_an_op_torch_onnx_cannot_translate_is_named(tmp_path):
    with pytest.raises(OnnxExportError, match=r"node 'no_onnx_form'.*could not translate"):
        export_onnx(graph(torch.ops.onnx_test.no_onnx_form), tmp_path / "m.onnx", X)
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_registered_lowering_exports_and_a_failed_export_writes_nothing(tmp_path):
    assert registered_ops()["bitfold::onnx_test_scale"] == "lowering"
    assert registered_ops()["bitfold::quantized_linear"] == "lowering"
    path = export_onnx(graph(lambda x: torch.ops.bitfold.onnx_test_scale(x, 0.5)), tmp_path / "m.onnx", X)
    assert [n.op_type for n in onnx.load(path).graph.node] == ["Relu", "Mul"]
    x = torch.randn(3, 4)
    assert np.array_equal(run(ort_session(path), [x])[0], torch.relu(x).numpy() * np.float32(0.5))
    before = path.read_bytes()
    failing = graph(lambda x: torch.ops.bitfold.onnx_test_scale(x, 0.5, True))
    with pytest.raises(OnnxExportError, match="refusing on purpose"):
        export_onnx(failing, path, X)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temp or partial file


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    gm = graph(torch.relu)
    with pytest.raises(OnnxExportError, match="mode must be one of simulate, compressed"):
        export_onnx(gm, tmp_path / "m.onnx", X, mode="fast")
    with pytest.raises(OnnxExportError, match="accuracy_level must be one of"):
        export_onnx(gm, tmp_path / "m.onnx", X, accuracy_level=7)
    with pytest.raises(OnnxExportError, match="takes 1 inputs"):
        export_onnx(gm, tmp_path / "m.onnx", X * 2)
    with pytest.raises(OnnxExportError, match="expects a bitfold QuantizedModel or a torch.fx.GraphModule"):
        export_onnx(torch.nn.ReLU(), tmp_path / "m.onnx", X)


def test_a_weight_computed_at_run_time_is_refused_by_name():
    node = helper.make_node("quantized_linear", ["x", "w", "s"], ["y"], domain="bitfold", fmt="int4",
                            out_features=2, in_features=4, layer="encoder.fc1")
    graph_proto = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4])
                                                  for n in ("x", "w", "s")],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("bitfold", 1)])
    with pytest.raises(OnnxExportError, match=r"bitfold::quantized_linear node 'encoder.fc1': its packed weight .* "
                                              r"must be a constant"):
        lower_placeholders(model, ExportOptions(mode="compressed"))


@pytest.mark.slow
def test_explicit_names_and_dynamic_axes(tmp_path):
    path = export_onnx(graph(torch.relu), tmp_path / "m.onnx", X, input_names=["features"], output_names=["relu"],
                       dynamic_axes={"features": {0: "rows"}})
    model = onnx.load(path)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("features", "relu")
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["rows", 4]
    assert np.array_equal(run(ort_session(path), [torch.ones(5, 4)])[0], np.ones((5, 4), np.float32))


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    from bitfold.backends.onnx import model_file

    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(model_file.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        model_file.save_atomically(model, path)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]
