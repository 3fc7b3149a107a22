"""Compressed weights and quantized linears, lowered from a placeholder node without torch.onnx.

Each test builds the ``bitfold::quantized_linear`` placeholder that ``torch.onnx.export``
would write, lowers it, checks the model, and compares ONNX Runtime with bitfold's op.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bitfold.backends.onnx.emitter import Emitter, NameScope
from bitfold.backends.onnx.lowering import ExportOptions, lower_placeholders
from bitfold.backends.onnx.weight_storage import emit_weight
from bitfold.ir import formats, ops
from bitfold.ir.formats import BlockFormat

from ._graphs import OPSET, run

N, K = 24, 200  # K not a multiple of 128 or 32: ragged last groups everywhere

WEIGHT_CASES = [  # format, group size, with zero point
    ("int8", None, False), ("uint8", 32, True), ("int4", None, False), ("uint4", 128, True), ("int4", 32, False),
    ("fp8_e4m3", None, False), ("fp8_e5m2", 16, False), ("e2m1", None, False), ("e3m0", 32, False),
    ("e1m2", None, False), ("nf4", 64, False), ("post5", None, False), ("uint3", 32, True), ("e4m3", None, False),
    ("mxfp4", None, False), ("nvfp4", None, False),
]


def make_weight(name: str, group, zero: bool, seed: int = 0) -> ops.PackedWeight:
    fmt = formats.get(name)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.exp2(torch.randint(-3, 3, (N, 1), generator=g).float())
    if isinstance(fmt, BlockFormat):
        return ops.pack_weight(w, name, fmt.block_scales(w, axis=1))
    rows = w if group is None else torch.nn.functional.pad(w, (0, -K % group)).unflatten(1, (-1, group))
    if zero:
        lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        return ops.pack_weight(w, name, scale, group, torch.round(fmt.qmin - lo / scale).clamp(fmt.qmin, fmt.qmax))
    return ops.pack_weight(w, name, rows.abs().amax(-1) / fmt.max, group)


@pytest.mark.parametrize("name,group,zero", WEIGHT_CASES)
def test_compressed_weight_decodes_exactly(name, group, zero):
    weight = make_weight(name, group, zero)
    em = Emitter(NameScope(), "w")
    out, stored = emit_weight(em, weight, "w")
    em.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(em.nodes, "decode", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [K, N])],
                              em.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    got = run(model, {})
    assert np.array_equal(got, weight.unpack().T.numpy())
    bits = formats.get(name).bits
    assert stored.stored_bytes < N * K * max(bits, 4) / 8 * 1.25 + N * 4 * (K // 16 + 1)


def placeholder_model(weight: ops.PackedWeight, shift=None, bias=None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight.packed.numpy(), "packed"),
             numpy_helper.from_array(weight.scale.numpy(), "scale")]
    inputs = ["x", "packed", "scale", "", "", ""]
    if weight.zero_point is not None:
        inits.append(numpy_helper.from_array(weight.zero_point.float().numpy(), "zero"))
        inputs[3] = "zero"
    if shift is not None:
        inits.append(numpy_helper.from_array(shift.numpy(), "shift"))
        inputs[4] = "shift"
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.numpy(), "bias"))
        inputs[5] = "bias"
    attrs = {"fmt": weight.fmt, "out_features": N, "in_features": K, "layer": "fc"}
    if weight.group_size is not None:
        attrs["group_size"] = weight.group_size
    node = helper.make_node("quantized_linear", inputs, ["y"], domain="bitfold", **attrs)
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("bitfold", 1)])
    model.ir_version = 10
    return model


def lowered(weight, mode, shift=None, bias=None, **options):
    model = placeholder_model(weight, shift, bias)
    ctx = lower_placeholders(model, ExportOptions(mode=mode, **options))
    onnx.checker.check_model(model, full_check=True)
    return model, ctx.layers["fc"]


def reference(weight, x, shift=None, bias=None):
    return torch.ops.bitfold.quantized_linear(x, weight.packed, weight.fmt, N, K, weight.scale, weight.group_size,
                                              weight.zero_point, shift, bias).numpy()


def rel_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("mode", ["simulate", "compressed"])
@pytest.mark.parametrize("name,group,zero", [("e2m1", None, False), ("uint4", 32, True), ("nf4", 64, False)])
def test_quantized_linear_with_input_shift(mode, name, group, zero):
    weight = make_weight(name, group, zero, seed=1)
    shift = torch.randint(0, 4, (K,), dtype=torch.int32)
    bias = torch.randn(N)
    model, facts = lowered(weight, mode, shift, bias, matmul_nbits=False)
    x = torch.randn(2, 5, K) * torch.exp2(shift.float())  # the pre-shifted activation
    assert rel_error(run(model, {"x": x.numpy()}), reference(weight, x, shift, bias)) < 1e-5
    ops_used = [n.op_type for n in model.graph.node]
    assert facts["input_shift"] and "MatMul" in ops_used
    if mode == "simulate":
        assert ops_used == ["MatMul", "Add"]  # the shift folded into the float weight, exactly
        assert facts["stored_bytes"] == N * K * 4
    else:
        assert ops_used[0] == "Mul"  # 2^-k on the activation, then the decoded weight
        assert facts["stored_bytes"] < N * K * 4 * 0.25  # 4-bit codes and scales: under a quarter of float32


@pytest.mark.parametrize("name,group,zero", [("int4", None, False), ("uint4", 128, True), ("uint4", 32, False)])
@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_int4_linears_become_matmul_nbits(name, group, zero, accuracy_level):
    weight = make_weight(name, group, zero, seed=2)
    bias = torch.randn(N)
    model, facts = lowered(weight, "compressed", bias=bias, accuracy_level=accuracy_level)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("com.microsoft", "MatMulNBits")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["accuracy_level"] == accuracy_level == facts["accuracy_level"]
    assert attrs["block_size"] == (group or 128) and (attrs["K"], attrs["N"], attrs["bits"]) == (K, N, 4)
    x = torch.randn(3, 5, K)
    error = rel_error(run(model, {"x": x.numpy()}), reference(weight, x, bias=bias))
    # Levels 0/1 compute in float32; level 4 quantizes the activation to int8 per block.
    assert error < (2e-2 if accuracy_level == 4 else 1e-5)
    block = group or 128
    blocks = -(-K // block)  # codes padded to whole blocks, float32 scales, packed 4-bit zero points
    assert facts["stored_bytes"] == N * blocks * block // 2 + N * blocks * 4 + N * -(-blocks // 2)


def test_matmul_nbits_can_be_turned_off_and_says_why_it_is_not_used():
    weight = make_weight("uint4", 128, True, seed=3)
    model, facts = lowered(weight, "compressed", matmul_nbits=False)
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    model, facts = lowered(make_weight("int4", 24, False), "compressed")  # groups of 24: not a power of two
    assert "MatMulNBits" not in [n.op_type for n in model.graph.node]
    assert "power-of-two" in facts["matmul_nbits_refused"]
