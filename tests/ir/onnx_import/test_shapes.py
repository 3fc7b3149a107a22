"""Shape computations: symbolic sizes, shape-op folding, and data-movement converters.

Models declare dynamic sizes by name (``float[B, T, 8]``); each is run at two sizes so a
size baked in at import time would show up as a mismatch.
"""

import operator

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.ir.onnx_import.harness import check, make_model, parse, random_inputs, targets

aten = torch.ops.aten


def check_sizes(model, *size_sets):
    gm = None
    for sizes in size_sets:
        gm = check(model, sizes=sizes)
    return gm


def test_runtime_shape_chain_becomes_sym_sizes():
    """Shape → Gather → Unsqueeze → Concat → Reshape (the exporters' head split)."""
    model = parse("""g (float[B, T, 8] x) => (float[B, 2, T, 4] y) {
        s = Shape(x)
        i0 = Constant<value = int64 {0}>()
        i1 = Constant<value = int64 {1}>()
        b = Gather<axis = 0>(s, i0)
        t = Gather<axis = 0>(s, i1)
        ax = Constant<value = int64[1] {0}>()
        bu = Unsqueeze(b, ax)
        tu = Unsqueeze(t, ax)
        heads = Constant<value = int64[2] {2, 4}>()
        shp = Concat<axis = 0>(bu, tu, heads)
        r = Reshape(x, shp)
        y = Transpose<perm = [0, 2, 1, 3]>(r)
    }""")
    gm = check_sizes(model, {"B": 2, "T": 3}, {"B": 5, "T": 7})
    assert targets(gm) == [aten.sym_size.int, aten.sym_size.int, aten.reshape.default, aten.permute.default]


def test_size_arithmetic_is_symbolic():
    """numel-style products and Mul/Add on sizes become operator calls on sym_size nodes."""
    model = parse("""g (float[B, T, 8] x) => (float[N, 4] y, float[M, 8] z) {
        s = Shape(x)
        zero = Constant<value = int64 {0}>()
        one = Constant<value = int64 {1}>()
        b = Gather(s, zero)
        t = Gather(s, one)
        two = Constant<value = int64 {2}>()
        bt = Mul(b, t)
        n = Mul(bt, two)
        ax = Constant<value = int64[1] {0}>()
        nu = Unsqueeze(n, ax)
        c = Constant<value = int64[1] {4}>()
        s2 = Concat<axis = 0>(nu, c)
        y = Reshape(x, s2)
        st = Constant<value = int64[1] {0}>()
        en = Constant<value = int64[1] {2}>()
        lead = Slice(s, st, en)
        m = ReduceProd<keepdims = 1>(lead)
        c8 = Constant<value = int64[1] {8}>()
        s3 = Concat<axis = 0>(m, c8)
        z = Reshape(x, s3)
    }""", opset=13)
    gm = check_sizes(model, {"B": 2, "T": 3}, {"B": 4, "T": 1})
    assert operator.mul in targets(gm)
    assert not gm.graph.find_nodes(op="get_attr")


def test_static_shapes_fold_away():
    model = parse("""g (float[2, 3, 8] x) => (float[6, 8] y) {
        s = Shape(x)
        st = Constant<value = int64[1] {0}>()
        en = Constant<value = int64[1] {2}>()
        a = Slice(s, st, en)
        p = ReduceProd<keepdims = 1>(a)
        c = Constant<value = int64[1] {-1}>()
        shp = Concat<axis = 0>(p, c)
        y = Reshape(x, shp)
    }""", opset=13)
    gm = check(model)
    assert targets(gm) == [aten.reshape.default]
    assert gm.graph.find_nodes(op="call_function", target=aten.reshape.default)[0].args[1] == [6, -1]


def test_reshape_zero_minus_one_and_allowzero():
    model = parse("""g (float[B, 6, 4] x) => (float[B, 3, 8] y, float[B, 24] z) {
        s = Constant<value = int64[3] {0, 3, -1}>()
        y = Reshape(x, s)
        f = Constant<value = int64[2] {0, -1}>()
        z = Reshape(x, f)
    }""")
    gm = check_sizes(model, {"B": 2}, {"B": 5})
    assert gm.graph.find_nodes(op="call_function", target=aten.sym_size.int)
    zero_dim = parse("""g (float[2, 0] x) => (float[0, 2] y) {
        s = Constant<value = int64[2] {0, 2}>()
        y = Reshape<allowzero = 1>(x, s)
    }""", opset=14)
    check(zero_dim, {"x": np.zeros((2, 0), np.float32)})


def test_expand_dynamic_and_bidirectional():
    """The legacy exporter's expand: ConstantOfShape → Mul(-1) → Equal → Where → Expand."""
    model = parse("""g (float[B, 1, 4] x, float[1, T, 1] m) => (float[B, T, 4] y, float[B, T, 4] z) {
        s = Shape(x)
        i0 = Constant<value = int64 {0}>()
        b = Gather(s, i0)
        ax = Constant<value = int64[1] {0}>()
        bu = Unsqueeze(b, ax)
        rest = Constant<value = int64[2] {-1, 4}>()
        shp = Concat<axis = 0>(bu, rest)
        three = Constant<value = int64[1] {2}>()
        ones = ConstantOfShape<value = int64[1] {1}>(three)
        neg = Constant<value = int64 {-1}>()
        minus = Mul(ones, neg)
        tail = Concat<axis = 0>(bu, minus)
        eq = Equal(tail, neg)
        fix = Where(eq, one3, tail)
        one3 = Constant<value = int64[3] {1, 1, 1}>()
        xm = Expand(x, fix)
        y = Add(xm, m)
        z = Expand(m, shape_of_y)
        shape_of_y = Shape(y)
    }""")
    gm = check_sizes(model, {"B": 2, "T": 3}, {"B": 3, "T": 5})
    assert aten.where.self not in targets(gm)


def test_runtime_shape_tensor_falls_back_to_item():
    """A shape computed from tensor values (not sizes) is read element by element at run time."""
    model = parse("""g (float[6, 4] x, int64[2] s) => (float[A, C] y) {
        y = Reshape(x, s)
    }""")
    gm = check(model, {"x": np.random.rand(6, 4).astype(np.float32), "s": np.array([3, 8])})
    assert aten.item.default in targets(gm)


def test_constant_of_shape_range_and_trilu_mask():
    """A causal mask built from the sequence length, as decoder exports do."""
    model = parse("""g (float[B, T] x) => (float[T, T] mask, int64[T] pos, float[B, T] y) {
        s = Shape(x)
        one = Constant<value = int64 {1}>()
        t = Gather(s, one)
        ax = Constant<value = int64[1] {0}>()
        tu = Unsqueeze(t, ax)
        tt = Concat<axis = 0>(tu, tu)
        full = ConstantOfShape<value = float[1] {-10000.0}>(tt)
        mask = Trilu<upper = 1>(full, one)
        zero = Constant<value = int64 {0}>()
        pos = Range(zero, t, one)
        fpos = Cast<to = 1>(pos)
        y = Add(x, fpos)
    }""")
    gm = check_sizes(model, {"B": 2, "T": 3}, {"B": 1, "T": 6})
    assert aten.full.default in targets(gm) and aten.arange.start_step in targets(gm)


def test_slice_forms():
    model = parse("""g (float[B, T, 8] x) => (float[B, T, 4] a, float[B, L, 8] b, float[B, T, 3] c, float[B, T, 8] d) {
        s0 = Constant<value = int64[1] {4}>()
        e0 = Constant<value = int64[1] {9223372036854775807}>()
        ax = Constant<value = int64[1] {-1}>()
        a = Slice(x, s0, e0, ax)
        s1 = Constant<value = int64[1] {1}>()
        e1 = Constant<value = int64[1] {-1}>()
        ax1 = Constant<value = int64[1] {1}>()
        b = Slice(x, s1, e1, ax1)
        s2 = Constant<value = int64[1] {-1}>()
        e2 = Constant<value = int64[1] {0}>()
        st = Constant<value = int64[1] {-3}>()
        c = Slice(x, s2, e2, ax, st)
        s3 = Constant<value = int64[1] {-1}>()
        e3 = Constant<value = int64[1] {-9223372036854775808}>()
        st3 = Constant<value = int64[1] {-1}>()
        d = Slice(x, s3, e3, ax, st3)
    }""")
    check_sizes(model, {"B": 2, "T": 3}, {"B": 1, "T": 5})


def test_slice_with_runtime_end_and_legacy_attrs():
    model = parse("""g (float[B, T, 8] x, int64[1, 16] pos) => (int64[1, T] p, float[B, T, 2] y) {
        s = Shape(x)
        one = Constant<value = int64 {1}>()
        t = Gather(s, one)
        ax = Constant<value = int64[1] {0}>()
        tu = Unsqueeze(t, ax)
        zero = Constant<value = int64[1] {0}>()
        p = Slice(pos, zero, tu, ax1)
        ax1 = Constant<value = int64[1] {1}>()
        y = Identity(x2)
        x2 = Slice(x, two, four, m1)
        two = Constant<value = int64[1] {2}>()
        four = Constant<value = int64[1] {4}>()
        m1 = Constant<value = int64[1] {2}>()
    }""")
    check_sizes(model, {"B": 2, "T": 3}, {"B": 1, "T": 7})
    legacy = parse("""g (float[4, 6] x) => (float[2, 3] y) {
        z = Slice<starts = [0], ends = [3], axes = [1]>(x)
        y = Slice<starts = [1, 0], ends = [3, 6], axes = [0, 1]>(z)
    }""", opset=9)
    check(legacy)


@pytest.mark.parametrize("text,opset", [
    ("a, b, c = Split<axis = 1>(x)", 11),
    ("a, b, c = Split<axis = 1, split = [1, 2, 3]>(x)", 11),
    ("a, b, c = Split<axis = 1>(x, sizes) \n sizes = Constant<value = int64[3] {3, 2, 1}>()", 13),
    ("a, b, c = Split<axis = 1, num_outputs = 3>(x)", 18),
])
def test_split(text, opset):
    model = parse(f"g (float[B, 6] x) => (float[B, S1] a, float[B, S2] b, float[B, S3] c) {{ {text} }}", opset=opset)
    gm = check_sizes(model, {"B": 2}, {"B": 3})
    assert aten.split_with_sizes.default in targets(gm)


def test_split_uneven_num_outputs_dynamic():
    model = parse("""g (float[2, T] x) => (float[2, A] a, float[2, B] b, float[2, C] c) {
        a, b, c = Split<axis = 1, num_outputs = 3>(x)
    }""", opset=18)
    check_sizes(model, {"T": 7}, {"T": 9})


def test_gather_forms():
    model = parse("""g (float[B, 5, 4] x, int64[B, 3] idx)
        => (float[B, 4] a, float[B, 2, 4] b, float[B, B, 3, 4] c, float[B, 4] d) {
        i = Constant<value = int64 {-1}>()
        a = Gather<axis = 1>(x, i)
        j = Constant<value = int64[2] {0, -2}>()
        b = Gather<axis = 1>(x, j)
        c = Gather<axis = 1>(x, idx)
        k = Constant<value = int64 {2}>()
        d = Gather<axis = 1>(x, k)
    }""")
    gm = check_sizes(model, {"B": 2}, {"B": 3})
    assert {aten.select.int, aten.index_select.default, aten.index.Tensor} <= set(targets(gm))


def test_embedding_from_float_initializer():
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "emb.weight")
    model = make_model([helper.make_node("Gather", ["emb.weight", "ids"], ["y"])],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 4])], [table])
    gm = check(model, {"ids": np.array([[1, 2, 9], [0, 0, 3]])})
    assert targets(gm) == [aten.embedding.default]
    assert list(dict(gm.named_parameters())) == ["emb_weight"]
    assert gm.meta["onnx_initializers"] == {"emb_weight": "emb.weight"}


def test_squeeze_unsqueeze_by_opset():
    new = parse("""g (float[B, 1, 4, 1] x) => (float[B, 4] a, float[1, B, 4, 1, 1] b, float[B, 4] c) {
        ax = Constant<value = int64[2] {1, -1}>()
        a = Squeeze(x, ax)
        ax2 = Constant<value = int64[2] {0, -1}>()
        b = Unsqueeze(c1, ax2)
        c1 = Squeeze(x, one)
        one = Constant<value = int64[1] {1}>()
        c = Squeeze(x2)
        x2 = Identity(z)
        z = Squeeze(x, one)
    }""", opset=13)
    check_sizes(new, {"B": 2}, {"B": 3})
    old = parse("""g (float[3, 1, 4] x) => (float[3, 4] a, float[1, 3, 1, 4] b) {
        a = Squeeze<axes = [1]>(x)
        b = Unsqueeze<axes = [0]>(x)
    }""", opset=11)
    check(old)


def test_flatten_transpose_tile_concat():
    model = parse("""g (float[B, 3, 4, 5] x, float[B, 2, 4, 5] w)
        => (float[B, 60] a, float[C, 20] b, float[1, D] c, float[5, 4, 3, B] d, float[B, 10, 4, 5] e,
           float[B, 6, 8, 5] f) {
        a = Flatten(x)
        b = Flatten<axis = 2>(x)
        c = Flatten<axis = 0>(x)
        d = Transpose(x)
        e = Concat<axis = 1>(x, w, x, w)
        reps = Constant<value = int64[4] {1, 2, 2, 1}>()
        f = Tile(x, reps)
    }""")
    gm = check_sizes(model, {"B": 2}, {"B": 3})
    assert aten.flatten.using_ints in targets(gm)


def test_cast_castlike_constants_and_pad():
    model = parse("""g (float[2, 3] x, int32[2, 3] i)
        => (int32[2, 3] a, float[2, 3] b, float16[2, 3] c, float[2, 7] d, float[4, 3] e, float[2, 3] f) {
        a = Cast<to = 6>(x)
        b = CastLike(i, x)
        c = Cast<to = 10>(x)
        p = Constant<value_ints = [0, 1, 0, 3]>()
        v = Constant<value_float = 1.5>()
        d = Pad(x, p, v)
        p2 = Constant<value = int64[4] {1, 0, 1, 0}>()
        e = Pad<mode = "reflect">(x, p2)
        f = Dropout(x)
    }""")
    check(model)


def test_reductions_by_opset():
    model = parse("""g (float[B, 3, 4] x)
        => (float[B, 1, 4] a, float[B, 4] b, float[B, 3, 1] c, float[1, 1, 1] d, float[B, 3, 4] e,
           float[B] f, float[B, 4] g) {
        one = Constant<value = int64[1] {1}>()
        a = ReduceMean(x, one)
        b = ReduceSum<keepdims = 0>(x, one)
        last = Constant<value = int64[1] {-1}>()
        c = ReduceMax(x, last)
        d = ReduceMin(x)
        e = ReduceMean<noop_with_empty_axes = 1>(x)
        both = Constant<value = int64[2] {1, 2}>()
        f = ReduceL2<keepdims = 0>(x, both)
        g = ReduceLogSumExp<keepdims = 0>(x, one)
    }""", opset=18)
    check_sizes(model, {"B": 2}, {"B": 3})
    old = parse("""g (float[2, 3, 4] x) => (float[2, 1, 4] a, float[2, 4] b, float[2, 3] c) {
        a = ReduceMean<axes = [1]>(x)
        b = ReduceSum<axes = [1], keepdims = 0>(x)
        c = ReduceL1<axes = [-1], keepdims = 0>(x)
    }""", opset=11)
    check(old)


def test_argmax_cumsum_topk():
    model = parse("""g (float[3, 5] x, int32[3, 5] i)
        => (int64[3, 1] a, int64[5] b, float[3, 5] c, int32[3, 5] d, float[3, 2] v, int64[3, 2] k) {
        a = ArgMax<axis = 1>(x)
        b = ArgMin<axis = 0, keepdims = 0>(x)
        one = Constant<value = int64 {1}>()
        c = CumSum<exclusive = 1, reverse = 1>(x, one)
        d = CumSum(i, one)
        two = Constant<value = int64[1] {2}>()
        v, k = TopK(x, two)
    }""")
    feeds = random_inputs(model)
    feeds["x"] = np.random.default_rng(1).permutation(15).reshape(3, 5).astype(np.float32)
    check(model, feeds)


def test_size_as_scalar_operand_and_runtime_gather_on_sizes():
    """A size in tensor arithmetic is a Python scalar (``mul.Tensor(x, sym_size)``), not a tensor."""
    model = parse("""g (float[B, T] x) => (int64[B, T] flat, float[B, T] scaled) {
        s = Shape(x)
        zero = Constant<value = int64 {0}>()
        one = Constant<value = int64 {1}>()
        b = Gather(s, zero)
        t = Gather(s, one)
        rows = Range(zero, b, one)
        cols = Range(zero, t, one)
        ax = Constant<value = int64[1] {1}>()
        r2 = Unsqueeze(rows, ax)
        base = Mul(r2, t)
        flat = Add(base, cols)
        tf = Cast<to = 1>(t)
        scaled = Div(x, tf)
    }""")
    gm = check_sizes(model, {"B": 2, "T": 3}, {"B": 3, "T": 5})
    mul = gm.graph.find_nodes(op="call_function", target=aten.mul.Tensor)[0]
    assert mul.args[1].target is aten.sym_size.int
    assert aten.stack.default not in targets(gm)
