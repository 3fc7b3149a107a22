"""The guard against ONNX Runtime re-quantizing a Conv's float weight beside a Q/DQ input."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bitfold.backends.onnx import ort_session
from bitfold.backends.onnx.ort_guards import guard_requantization


def _qdq_conv(tmp_path, zero_point: int):
    """x → Q → DQ → Conv(float weight on a fine grid, float bias) → Relu → Q → DQ (int8, scale 1):
    the quantized node group ONNX Runtime's WeightBiasQuantization looks for."""
    rng = np.random.default_rng(0)
    weight = (np.round(rng.normal(size=(6, 4, 3, 3)) * 64) / 64 * np.float32(1.37)).astype(np.float32)
    weight[0] *= 40  # one large channel: a per-tensor INT8 grid cannot hold the small ones exactly
    bias = rng.normal(size=6).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
             numpy_helper.from_array(np.array(1.0, np.float32), "s_out")]
    q_inputs = ["x", "s", "z"]
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", *q_inputs[1:]], ["xq"], name="dq"),
             helper.make_node("Conv", ["xq", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s_out"], ["q_out"], name="q_out", output_dtype=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["q_out", "s_out"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = rng.normal(size=(1, 4, 8, 8)).astype(np.float32) * 3
    s, z = 0.05, zero_point
    xq = (np.clip(np.round(x / s) + z, -128, 127) - z) * s
    conv = torch.nn.functional.conv2d(torch.from_numpy(xq).double(), torch.from_numpy(weight).double(),
                                      torch.from_numpy(bias).double(), padding=1)
    want = torch.clamp(torch.round(torch.relu(conv)), -128, 127).numpy()
    return model, x, want


def test_the_guarded_file_runs_the_weights_as_written(tmp_path):
    for zero_point in (0, 3):
        model, x, want = _qdq_conv(tmp_path, zero_point)
        assert guard_requantization(model) == ["dq"]
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
        assert [a.i for a in dq.attribute if a.name == "axis"] == [1]
        scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
        assert list(scale.dims) == [4]
        onnx.checker.check_model(model, full_check=True)
        path = tmp_path / f"guarded_{zero_point}.onnx"
        onnx.save(model, path)
        got = ort_session(path).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= 1  # at most one output code apart (float rounding at a boundary)
        assert (got == want).mean() > 0.99


def test_files_without_the_pattern_are_unchanged(tmp_path):
    model, _, _ = _qdq_conv(tmp_path, 0)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[0] = "x"  # the Conv no longer reads the DequantizeLinear
    before = model.SerializeToString()
    assert guard_requantization(model) == []
    assert model.SerializeToString() == before
