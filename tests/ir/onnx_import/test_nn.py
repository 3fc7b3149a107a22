"""MatMul/Gemm/Einsum, convolutions, pooling and normalization converters against ONNX Runtime."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.ir.onnx_import.harness import check, make_model, parse, targets

aten = torch.ops.aten
RNG = np.random.default_rng(0)


def _init(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_gemm_linear_form():
    """nn.Linear's export (transB=1, 1-D bias) becomes aten.linear with the ONNX weights."""
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)
    model = make_model([node], [_vi("x", ["N", 5])], [_vi("y", ["N", 3])], [_init("W", 3, 5), _init("b", 3)])
    gm = check(model, sizes={"N": 4})
    assert targets(gm) == [aten.linear.default]
    assert set(dict(gm.named_parameters())) == {"W", "b"}


@pytest.mark.parametrize("attrs", [dict(transA=1), dict(alpha=0.5, beta=2.0, transB=1), dict(),
                                   dict(transB=1, beta=0.0)])
def test_gemm_general(attrs):
    a_shape = [5, 4] if attrs.get("transA") else [4, 5]
    b_shape = [3, 5] if attrs.get("transB") else [5, 3]
    node = helper.make_node("Gemm", ["a", "B", "C"], ["y"], **attrs)
    model = make_model([node], [_vi("a", a_shape)], [_vi("y", [4, 3])], [_init("B", *b_shape), _init("C", 4, 3)])
    gm = check(model)
    assert aten.linear.default not in targets(gm)


def test_gemm_without_bias_and_matmul_add_stays_literal():
    model = make_model(
        [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1), helper.make_node("MatMul", ["h", "V"], ["m"]),
         helper.make_node("Add", ["m", "c"], ["y"])],
        [_vi("x", [2, 5])], [_vi("y", [2, 4])], [_init("W", 3, 5), _init("V", 3, 4), _init("c", 4)])
    gm = check(model)
    assert targets(gm) == [aten.linear.default, aten.matmul.default, aten.add.Tensor]


def test_batched_matmul_and_einsum():
    model = parse("""g (float[2, 3, 4, 5] a, float[2, 3, 5, 6] b) => (float[2, 3, 4, 6] y, float[2, 3, 6, 4] z) {
        y = MatMul(a, b)
        z = Einsum<equation = "bhij, bhjk -> bhki">(a, b)
    }""")
    check(model)


@pytest.mark.parametrize("attrs,shape", [
    (dict(pads=[1, 1, 1, 1]), [2, 4, 8, 8]),
    (dict(strides=[2, 2], dilations=[2, 1], pads=[0, 1, 2, 1]), [2, 4, 9, 8]),
    (dict(group=2, auto_pad="SAME_UPPER", strides=[2, 2]), [2, 4, 7, 8]),
    (dict(auto_pad="SAME_LOWER"), [2, 4, 8, 8]),
    (dict(auto_pad="VALID", strides=[1, 2]), [2, 4, 8, 8]),
])
def test_conv2d(attrs, shape):
    groups = attrs.get("group", 1)
    node = helper.make_node("Conv", ["x", "W", "b"], ["y"], kernel_shape=[3, 3], **attrs)
    model = make_model([node], [_vi("x", shape)], [_vi("y", None)], [_init("W", 6, 4 // groups, 3, 3), _init("b", 6)])
    gm = check(model)
    conv = next(n for n in gm.graph.nodes if n.target is aten.conv2d.default)
    assert conv.args[1].target == "W"
    asymmetric = attrs.get("pads", [0, 0, 0, 0])[:2] != attrs.get("pads", [0, 0, 0, 0])[2:]
    assert (aten.pad.default in targets(gm)) == (asymmetric or attrs.get("auto_pad") == "SAME_UPPER")


def test_conv1d_depthwise_and_no_bias():
    node = helper.make_node("Conv", ["x", "W"], ["y"], group=4, pads=[2, 2], dilations=[2])
    model = make_model([node], [_vi("x", ["N", 4, 10])], [_vi("y", None)], [_init("W", 4, 1, 3)])
    gm = check(model, sizes={"N": 3})
    assert targets(gm) == [aten.conv1d.default]


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
                                   dict(strides=[2, 1], pads=[0, 1, 1, 0], group=2)])
def test_conv_transpose(attrs):
    groups = attrs.get("group", 1)
    node = helper.make_node("ConvTranspose", ["x", "W", "b"], ["y"], kernel_shape=[3, 3], **attrs)
    model = make_model([node], [_vi("x", [1, 4, 5, 5])], [_vi("y", None)],
                       [_init("W", 4, 6 // groups, 3, 3), _init("b", 6)])
    check(model)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], pads=[0, 0, 1, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[2, 2], dilations=[2, 2]),
])
def test_max_pool(attrs):
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [_vi("x", [2, 3, 7, 8])], [_vi("y", None)])
    check(model)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[3, 3], pads=[0, 1, 2, 1], count_include_pad=1),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
])
def test_average_pool(attrs):
    pool = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    model = make_model([pool], [_vi("x", [2, 3, 7, 8])], [_vi("y", None)])
    check(model)


def test_global_pools_and_1d_pools():
    model = parse("""g (float[N, 3, 7, 8] x, float[N, 3, 9] s)
        => (float[N, 3, 1, 1] a, float[N, 3, 1, 1] m, float[N, 3, 4] p, float[N, 3, 4] q) {
        a = GlobalAveragePool(x)
        m = GlobalMaxPool(x)
        p = MaxPool<kernel_shape = [3], strides = [2]>(s)
        q = AveragePool<kernel_shape = [3], strides = [2]>(s)
    }""")
    gm = check(model, sizes={"N": 3})
    assert aten.adaptive_avg_pool2d.default in targets(gm)


def test_batch_norm_form():
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    var = numpy_helper.from_array(RNG.random(4).astype(np.float32) + 0.5, "v")
    model = make_model([node], [_vi("x", ["N", 4, 5, 5])], [_vi("y", ["N", 4, 5, 5])],
                       [_init("s", 4), _init("b", 4), _init("m", 4), var])
    gm = check(model, sizes={"N": 2})
    bn = next(n for n in gm.graph.nodes if n.target is aten.batch_norm.default)
    assert [a.target for a in bn.args[1:5]] == ["s", "b", "m", "v"]
    assert bn.args[5:] == (False, 0.1, 0.001, False)


def test_layer_norm_instance_norm_group_norm():
    model = make_model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], epsilon=1e-6),
         helper.make_node("LayerNormalization", ["x", "g"], ["z"], axis=-2),
         helper.make_node("InstanceNormalization", ["c", "s", "t"], ["i"]),
         helper.make_node("GroupNormalization", ["c", "s", "t"], ["gn"], num_groups=2)],
        [_vi("x", ["B", 6, 8]), _vi("c", [2, 4, 3, 3])],
        [_vi("y", None), _vi("z", None), _vi("i", None), _vi("gn", None)],
        [_init("g", 8), _init("b", 8), _init("s", 4), _init("t", 4)], opset=21, ir_version=10)
    gm = check(model, sizes={"B": 2})
    ln, ln_broadcast = gm.graph.find_nodes(op="call_function", target=aten.layer_norm.default)
    assert ln.args[1] == [8] and ln.args[4] == 1e-6
    assert ln_broadcast.args[1:4] == ([6, 8], None, None)  # γ of shape [8] only broadcasts: applied after
    assert aten.group_norm.default in targets(gm) and aten.instance_norm.default in targets(gm)


def test_softmax_legacy_axis_coerces_to_2d():
    model = parse("""g (float[2, 3, 4] x) => (float[2, 3, 4] y, float[2, 3, 4] z, float[2, 3, 4] w) {
        y = Softmax<axis = 1>(x)
        z = LogSoftmax<axis = 2>(x)
        w = Softmax(x)
    }""", opset=11)
    gm = check(model)
    assert aten.reshape.default in targets(gm)
    modern = parse("g (float[2, 3, 4] x) => (float[2, 3, 4] y) { y = Softmax<axis = 1>(x) }", opset=13)
    assert targets(check(modern)) == [aten.softmax.int]
