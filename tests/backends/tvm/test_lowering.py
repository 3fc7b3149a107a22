"""Graph → Relax lowering: bitfold's fused ops, the ATen overloads bitfold lowers itself,
dynamic shapes, the call interface, and errors that name the node."""

import numpy as np
import pytest
import torch
from torch.export import Dim

from bitfold.backends.tvm import LoweringError, compile
from bitfold.backends.tvm.importer import GraphImporter
from bitfold.backends.tvm.signature import infer_input_specs
from bitfold.backends.tvm.target import resolve_target
from bitfold.ir import formats, from_torch, ops
from bitfold.passes import FuseActivation, run_standard_passes

pytestmark = pytest.mark.slow
ACTIVATIONS = ["none", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "relu6"]


class FusedOps(torch.nn.Module):
    """Every activation as a fused linear, plus fused convolutions (grouped, strided)."""

    def __init__(self):
        super().__init__()
        self.linears = torch.nn.ModuleList(torch.nn.Linear(24, 40) for _ in ACTIVATIONS)
        self.conv = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x, image):
        outs = [ops.fused_linear(x, lin.weight, lin.bias, act) for lin, act in zip(self.linears, ACTIVATIONS)]
        y = ops.fused_conv2d(image, self.conv.weight, self.conv.bias, [2, 2], [1, 1], [1, 1], 1, "relu6")
        outs.append(ops.fused_conv2d(y, self.depthwise.weight, None, [1, 1], [1, 1], [1, 1], 8, "hardswish"))
        return tuple(outs)


def test_fused_linear_and_conv_match_the_ops():
    torch.manual_seed(0)
    model = FusedOps().eval()
    x, image = torch.randn(3, 5, 24) * 2, torch.randn(2, 4, 9, 11)
    cm = compile(model, "llvm", example_inputs=(x, image))
    with torch.no_grad():
        want = model(x, image)
    for act, got, ref in zip(ACTIVATIONS + ["conv2d", "depthwise"], cm(x, image), want):
        rel = float((got - ref).abs().max() / ref.abs().max())
        assert rel <= 1e-5, f"{act}: relative error {rel:.3g}"


class Block(torch.nn.Module):
    """Pieces of a LLaMA block whose lowering bitfold provides: RMSNorm, a causal mask built
    from the sequence length (where/slice), rotate-half slicing, attention matmuls."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(16, eps=1e-6)
        self.qkv = torch.nn.Linear(16, 48)
        self.act = torch.nn.GELU()
        self.register_buffer("positions", torch.arange(64))

    def forward(self, x, mask):
        s = x.shape[1]
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q = torch.cat([-q[..., 8:], q[..., :8]], dim=-1)
        pos = self.positions[:s]
        causal = torch.where(pos[None, :] <= pos[:, None], 0.0, float("-inf"))
        scores = q @ k.transpose(-1, -2) / 4.0 + causal + (1 - mask[:, None, :]) * -1e4
        return self.act(scores.softmax(-1) @ v)


def test_dynamic_sequence_lengths_run_with_one_build():
    torch.manual_seed(0)
    model = Block().eval()
    x, mask = torch.randn(2, 12, 16), torch.ones(2, 12)
    seq = Dim("seq", min=2, max=64)
    gm = from_torch(model, (x, mask), dynamic_shapes=({1: seq}, {1: seq}))
    run_standard_passes(gm, sample_inputs=(x, mask))
    cm = compile(gm, "llvm")
    assert isinstance(cm.inputs[0].shape[1], str)
    for length in (1, 5, 6, 7, 12, 31, 64):
        x, mask = torch.randn(2, length, 16), torch.ones(2, length)
        mask[1, length // 2:] = 0
        with torch.no_grad():
            ref = model(x, mask)
        got = cm(x, mask)
        assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-5, f"seq {length}"


@pytest.fixture(scope="module")
def small_compiled():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    x = torch.randn(3, 8)
    gm = from_torch(model, (x,))
    FuseActivation().run(gm)
    return model, compile(gm, "llvm")


def test_numpy_in_numpy_out_and_torch_in_torch_out(small_compiled):
    model, cm = small_compiled
    x = torch.randn(3, 8)
    got_np, got_t = cm(x.numpy()), cm(x)
    assert isinstance(got_np, np.ndarray) and isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_np, model(x).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_calls_with_the_wrong_inputs_say_what_is_wrong(small_compiled):
    _, cm = small_compiled
    with pytest.raises(ValueError, match="axis 0 must be 3"):
        cm(torch.randn(4, 8))
    with pytest.raises(TypeError, match="must be float32"):
        cm(torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="takes 1 inputs"):
        cm(torch.randn(3, 8), torch.randn(3, 8))


def test_an_op_without_lowering_is_named():
    class Histogram(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x, bins=4) + 1

    with pytest.raises(LoweringError, match=r"node 'histc' \(aten\.histc\.default\) has no TVM lowering"):
        compile(Histogram(), "llvm", example_inputs=(torch.randn(10),))


def test_a_quantized_linear_without_a_kernel_is_an_error_not_a_dense_fallback():
    weight = torch.randn(16, 32)
    packed = ops.pack_weight(weight, "int4", weight.abs().amax(1) / 7)

    class Float64Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("packed", packed.packed)
            self.register_buffer("scale", packed.scale)

        def forward(self, x):
            return ops.quantized_linear(x, self.packed, "int4", 16, 32, self.scale)

    with pytest.raises(LoweringError, match=r"node 'quantized_linear'.*no low-bit kernel.*float64"):
        compile(Float64Layer(), "llvm", example_inputs=(torch.randn(2, 32, dtype=torch.float64),))


class PackedLayer(torch.nn.Module):
    """A ``bitfold::quantized_linear`` of random weights in ``fmt``, per-channel scales."""

    def __init__(self, fmt="int4", n=48, k=128, seed=0):
        super().__init__()
        weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
        packed = ops.pack_weight(weight, fmt, weight.abs().amax(1) / formats.get(fmt).max)
        self.fmt, self.shape = fmt, (n, k)
        self.register_buffer("packed", packed.packed)
        self.register_buffer("scale", packed.scale)

    def forward(self, x):
        return ops.quantized_linear(x, self.packed, self.fmt, *self.shape, self.scale)


def test_int8_activation_kernels_are_opt_in_and_close_to_the_op():
    layer = PackedLayer().eval()
    x = torch.randn(1, 5, 128)
    with torch.no_grad():
        want = layer(x)
    exact = compile(layer, "llvm -mcpu=native", example_inputs=(x,))
    assert float((exact(x) - want).abs().max() / want.abs().max()) <= 1e-5
    w4a8 = compile(layer, "llvm -mcpu=native", example_inputs=(x,), int8_activations=True)
    assert 1e-6 < float((w4a8(x) - want).abs().max() / want.abs().max()) <= 3e-2  # int8 rounding, not exact


class BertMask(torch.nn.Module):
    """The attention mask transformers builds for BERT: ``new_ones(..., dtype=torch.bool)``
    combined with the padding mask, then ``where`` with a Python number."""

    def forward(self, x, mask):
        keep = x.new_ones((), dtype=torch.bool) & (mask[:, None, :] > 0)
        ones = torch.ones_like(mask, dtype=torch.bool) & torch.zeros_like(x[..., 0], dtype=torch.bool).logical_not()
        return torch.where(keep & ones[:, None, :], x, torch.finfo(torch.float32).min)


def test_dtype_keywords_are_honoured_without_recorded_dtypes():
    x, mask = torch.randn(2, 5, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    gm = from_torch(BertMask(), (x, mask))
    for node in gm.graph.nodes:  # as in a graph loaded from disk: only the inputs' dtypes are known
        if node.op == "call_function":
            node.meta.pop("val", None)
    got = compile(gm, "llvm")(x, mask)
    np.testing.assert_array_equal(got.numpy(), BertMask()(x, mask).numpy())


def test_a_non_bool_where_condition_is_named():
    class IntCondition(torch.nn.Module):
        def forward(self, x, mask):
            return torch.ops.aten.where.ScalarOther(mask.to(torch.bool), x, 0.0)

    x, mask = torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64)
    gm = from_torch(IntCondition(), (x, mask))
    for node in gm.graph.nodes:
        if node.target is torch.ops.aten.where.ScalarOther:
            node.args = (node.args[0].args[0],) + node.args[1:]  # the int64 mask itself
    gm.graph.eliminate_dead_code()
    gm.recompile()
    with pytest.raises(LoweringError, match=r"node 'where' .*lowered to int64, not bool"):
        compile(gm, "llvm")


class StableGelus(torch.nn.Module):
    """bitfold::gelu in both forms, then a pre-shift and the E2M1 quantizer (MiniLM's FC2 input)."""

    def forward(self, x):
        shifted = torch.ops.bitfold.gelu(x) * 128.0
        return (torch.ops.bitfold.gelu(x), torch.ops.bitfold.gelu(x, "tanh"),
                torch.ops.bitfold.fake_quantize(shifted, "e2m1", torch.tensor(4.10093879699707)))


def test_stable_gelu_matches_the_op_and_keeps_the_tail_codes():
    x = torch.cat([torch.linspace(-12.0, 12.0, 48000), torch.linspace(-4.5, -1.5, 16000)]).reshape(1, -1)
    model = StableGelus().eval()
    cm = compile(model, "llvm", example_inputs=(x,))
    want = model(x)
    for name, got, ref in zip(("none", "tanh"), cm(x)[:2], want[:2]):
        visible = ref.abs() > 1e-30
        rel = float(((got - ref).abs() / ref.abs())[visible].max())
        assert rel <= 5e-6, f"{name}: relative error {rel:.3g}"
    assert torch.equal(cm(x)[2], want[2])


class Int2ThenInt4(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = PackedLayer("int2", n=128, k=96, seed=1), PackedLayer("int4", n=48, k=128)

    def forward(self, x):
        return self.second(self.first(x))


def test_lookup_tables_take_the_2_bit_layers_only():
    model = Int2ThenInt4().eval()
    x = torch.randn(1, 6, 96)
    with torch.no_grad():
        want = model(x)
    target = resolve_target("llvm -mcpu=native")
    gm = from_torch(model, (x,))
    with target:
        mod = GraphImporter(gm, infer_input_specs(gm), target, lookup_tables=True).run().mod
    kernels = sorted(gv.name_hint for gv, f in mod.functions_items() if gv.name_hint.startswith("bitfold_linear"))
    assert kernels == ["bitfold_linear_int2_lut_128x96", "bitfold_linear_int4_48x128"]
    compiled = compile(model, "llvm -mcpu=native", example_inputs=(x,), lookup_tables=True)
    assert 1e-6 < float((compiled(x) - want).abs().max() / want.abs().max()) <= 3e-2  # int8 tables, not exact


class Rotations(torch.nn.Module):
    def forward(self, x):
        return torch.ops.bitfold.hadamard(x, 512), torch.ops.bitfold.hadamard(x * 3.0, 2)


def test_hadamard_is_one_kernel_per_block_and_bit_identical_to_the_op():
    x = torch.randn(2, 5, 1536)
    gm = from_torch(Rotations().eval(), (x,), dynamic_shapes=({0: Dim("batch"), 1: Dim("seq")},))
    target = resolve_target("llvm")
    with target:
        mod = GraphImporter(gm, infer_input_specs(gm), target).run().mod
    assert {"bitfold_hadamard512", "bitfold_hadamard2"} <= {gv.name_hint for gv in mod.get_global_vars()}
    cm = compile(gm, "llvm")
    for shape in [(2, 5, 1536), (1, 13, 1536)]:
        x = torch.randn(*shape) * 10
        for got, want in zip(cm(x), Rotations()(x)):
            assert torch.equal(got, want)
