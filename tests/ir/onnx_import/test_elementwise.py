"""Elementwise converters against ONNX Runtime: unary math, arithmetic, comparisons, Where, Clip."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.ir.onnx_import.harness import check, make_model, parse, targets

aten = torch.ops.aten

UNARY = ["Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Floor", "Ceil", "Tanh", "Sigmoid", "Relu", "Erf",
         "Sign", "Sin", "Cos", "Round", "Softplus", "HardSwish", "Softsign", "Elu", "Selu", "LeakyRelu",
         "HardSigmoid", "Mish"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op):
    opset = 18 if op == "Mish" else 17
    model = parse(f"g (float[3, 4] x) => (float[3, 4] y) {{ a = Abs(x) \n y = {op}(a) }}" if op in ("Sqrt", "Log")
                  else f"g (float[3, 4] x) => (float[3, 4] y) {{ y = {op}(x) }}", opset=opset)
    check(model)


def test_attribute_activations():
    model = parse("""g (float[2, 5] x) => (float[2, 5] a, float[2, 5] b, float[2, 5] c, float[2, 5] d, float[2, 5] e) {
        a = LeakyRelu<alpha = 0.1>(x)
        b = HardSigmoid<alpha = 0.3, beta = 0.4>(x)
        c = HardSigmoid<alpha = 0.16666667, beta = 0.5>(x)
        d = Elu<alpha = 0.7>(x)
        e = Selu<alpha = 1.5, gamma = 2.0>(x)
    }""")
    gm = check(model)
    assert aten.hardsigmoid.default in targets(gm)
    assert aten.leaky_relu.default in targets(gm)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    gelu = f'Gelu<approximate = "{approximate}">'
    gm = check(parse(f"g (float[2, 8] x) => (float[2, 8] y) {{ y = {gelu}(x) }}", opset=20))
    node = next(n for n in gm.graph.nodes if n.target is aten.gelu.default)
    assert node.kwargs == ({} if approximate == "none" else {"approximate": "tanh"})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
def test_binary_broadcast(op):
    model = parse(f"g (float[2, 3, 4] a, float[4] b) => (float[2, 3, 4] y) {{ p = Abs(a) \n y = {op}(p, b) }}")
    check(model)


@pytest.mark.parametrize("op,target", [("Add", aten.add.Tensor), ("Sub", aten.rsub.Scalar), ("Mul", aten.mul.Tensor)])
def test_scalar_constant_on_the_left(op, target):
    model = parse(f"g (float[2, 3] x) => (float[2, 3] y) {{ c = Constant<value = float {{2.5}}>() \n y = {op}(c, x) }}")
    gm = check(model)
    assert targets(gm) == [target]


def test_scalar_constants_become_literals():
    model = parse("""g (float[2, 3] x) => (float[2, 3] y) {
        two = Constant<value = float {2.0}>()
        eps = Constant<value = float[1] {0.001}>()
        p = Pow(x, two)
        q = Add(p, eps)
        r = Div(q, two)
        y = Sqrt(r)
    }""")
    gm = check(model)
    pow_node = next(n for n in gm.graph.nodes if n.target is aten.pow.Tensor_Scalar)
    assert pow_node.args[1] == 2.0
    assert not any(n.op == "get_attr" for n in gm.graph.nodes)


def test_integer_div_truncates():
    model = parse("g (int64[6] a, int64[6] b) => (int64[6] y) { y = Div(a, b) }")
    feeds = {"a": np.array([7, -7, 7, -7, 0, 9]), "b": np.array([2, 2, -2, -2, 3, 4])}
    gm = check(model, feeds)
    assert targets(gm) == [aten.div.Tensor_mode]


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod(fmod):
    model = parse(f"g (int32[6] a, int32[6] b) => (int32[6] y) {{ y = Mod<fmod = {fmod}>(a, b) }}")
    check(model, {"a": np.array([7, -7, 7, -7, 0, 9], np.int32), "b": np.array([3, 3, -3, -3, 3, 4], np.int32)})


def test_pow_keeps_base_type():
    model = parse("g (float16[4] a, float[4] b) => (float16[4] y) { y = Pow(a, b) }")
    check(model, {"a": np.array([1, 2, 3, 0.5], np.float16), "b": np.array([2, 0.5, 1, 3], np.float32)}, tol=1e-3)


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparisons(op):
    model = parse(f"""g (int64[3, 4] a, int64[4] b) => (bool[3, 4] y, bool[3, 4] z) {{
        y = {op}(a, b)
        c = Constant<value = int64 {{2}}>()
        z = {op}(c, a)
    }}""")
    check(model)


def test_logic_and_where():
    model = parse("""g (bool[3, 4] a, bool[3, 4] b, float[3, 4] x, float[4] z)
        => (float[3, 4] y, float[3, 4] w, bool[3, 4] n) {
        c = And(a, b)
        d = Or(c, a)
        e = Xor(d, b)
        n = Not(e)
        y = Where(n, x, z)
        big = Constant<value = float {-10000.0}>()
        w = Where(a, big, x)
    }""")
    gm = check(model)
    assert aten.where.ScalarSelf in targets(gm)


def test_clip_forms():
    model = parse("""g (float[3, 4] x, float lo) => (float[3, 4] a, float[3, 4] b, float[3, 4] c) {
        zero = Constant<value = float {0.0}>()
        six = Constant<value = float {6.0}>()
        a = Clip(x, zero, six)
        b = Clip(x, lo)
        c = Clip(x, , six)
    }""")
    gm = check(model)
    assert aten.clamp.Tensor in targets(gm) and aten.clamp.default in targets(gm)
    legacy = parse("g (float[3, 4] x) => (float[3, 4] y) { y = Clip<min = -0.5, max = 0.5>(x) }", opset=9)
    check(legacy)


def test_variadic_min_max_sum_mean():
    model = parse("""g (float[3, 4] a, float[4] b, float[3, 1] c)
        => (float[3, 4] w, float[3, 4] x, float[3, 4] y, float[3, 4] z) {
        w = Min(a, b, c)
        x = Max(a, b)
        y = Sum(a, b, c)
        z = Mean(a, b, c)
    }""")
    check(model)


def test_prelu_per_channel_and_general():
    model = parse("""g (float[2, 3, 4, 4] x, float[3, 1, 1] s, float[4] t)
        => (float[2, 3, 4, 4] y, float[2, 3, 4, 4] z) {
        y = PRelu(x, s)
        z = PRelu(x, t)
    }""")
    gm = check(model)
    assert aten.prelu.default in targets(gm)


def test_half_precision_weights_stay_half():
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float16), "w16")
    b16 = helper.make_tensor("bias_bf16", TensorProto.BFLOAT16, [3], [0.5, -1.25, 2.0])
    model = make_model(
        [helper.make_node("MatMul", ["x", "w16"], ["h"]),
         helper.make_node("Cast", ["bias_bf16"], ["b32"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["h32", "b32"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w16, b16])
    gm = check(model, tol=1e-3)
    params = dict(gm.named_parameters())
    assert params["w16"].dtype == torch.float16 and params["bias_bf16"].dtype == torch.bfloat16
