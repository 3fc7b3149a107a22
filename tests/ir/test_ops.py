"""bitfold's custom ops: eager results, and intact nodes in a torch.export graph."""

import pytest
import torch

from bitfold.ir import formats, ops


def _per_channel(w, fmt):
    return w.abs().amax(1) / formats.get(fmt).max


@pytest.mark.parametrize("fmt", ["int4", "e2m1", "e3m0", "nf4", "fp8_e4m3", "int3", "fp6_e2m3"])
def test_quantized_linear_equals_dequantized_matmul(fmt):
    torch.manual_seed(0)
    w, x, b = torch.randn(24, 40), torch.randn(2, 5, 40), torch.randn(24)
    pw = ops.pack_weight(w, fmt, _per_channel(w, fmt))
    w_hat = formats.get(fmt).quantize(w, pw.scale, axis=0)
    assert torch.equal(pw.unpack(), w_hat)
    y = torch.ops.bitfold.quantized_linear(x, pw.packed, fmt, 24, 40, pw.scale, None, None, None, b)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w_hat, b))


def test_quantized_linear_with_groups_zero_points_and_blocks():
    torch.manual_seed(1)
    w, x = torch.randn(16, 100), torch.randn(3, 100)
    lo = w.unflatten(1, (4, 25)).amin(-1)
    hi = w.unflatten(1, (4, 25)).amax(-1)
    s = (hi - lo) / 15
    zp = torch.round(-lo / s)
    pw = ops.pack_weight(w, "uint4", s, group_size=25, zero_point=zp)
    y = torch.ops.bitfold.quantized_linear(x, pw.packed, "uint4", 16, 100, s, 25, zp, None, None)
    w_hat = formats.get("uint4").quantize(w, s, axis=1, group_size=25, zero_point=zp)
    torch.testing.assert_close(y, x @ w_hat.T)

    mx = formats.get("mxfp4")
    w2 = torch.randn(8, 64)
    scales = mx.block_scales(w2)
    pw2 = ops.pack_weight(w2, "mxfp4", scales)
    torch.testing.assert_close(pw2.unpack(), mx.quantize(w2))


def test_input_shift_undoes_a_power_of_two_preshift_exactly():
    """Channel j multiplied by 2^k_j upstream, weight column j by 2^-k_j inside the op."""
    torch.manual_seed(2)
    w, x = torch.randn(12, 32), torch.randn(4, 32)
    k = torch.randint(0, 8, (32,), dtype=torch.int32)
    pw = ops.pack_weight(w, "e2m1", _per_channel(w, "e2m1"))
    shifted = x * torch.exp2(k.float())
    y = torch.ops.bitfold.quantized_linear(shifted, pw.packed, "e2m1", 12, 32, pw.scale, None, None, k, None)
    assert torch.equal(y, torch.nn.functional.linear(x, pw.unpack()))


def test_fake_quantize_op_matches_format():
    x = torch.randn(4, 64)
    s = torch.tensor(0.25)
    assert torch.equal(torch.ops.bitfold.fake_quantize(x, "e2m1", s, None, None, None),
                       formats.get("e2m1").quantize(x, s))
    # Block formats compute their own scales at run time.
    assert torch.equal(torch.ops.bitfold.fake_quantize(x, "mxfp4", None, None, None, None),
                       formats.get("mxfp4").quantize(x))
    with pytest.raises(ValueError, match="needs a scale"):
        torch.ops.bitfold.fake_quantize(x, "int8", None, None, None, None)


def test_quantized_linear_rejects_a_wrong_input_width():
    w = torch.randn(4, 8)
    pw = ops.pack_weight(w, "int8", _per_channel(w, "int8"))
    with pytest.raises(ValueError, match="input has 9 features, the weight expects 8"):
        torch.ops.bitfold.quantized_linear(torch.randn(2, 9), pw.packed, "int8", 4, 8, pw.scale, None, None, None, None)


class _Quantized(torch.nn.Module):
    def __init__(self):
        super().__init__()
        w = torch.randn(16, 32)
        pw = ops.pack_weight(w, "e2m1", _per_channel(w, "e2m1"))
        self.register_buffer("packed", pw.packed)
        self.register_buffer("w_scale", pw.scale)
        self.register_buffer("shift", torch.randint(0, 4, (32,), dtype=torch.int32))
        self.register_buffer("a_scale", torch.tensor(0.3))
        self.bias = torch.nn.Parameter(torch.randn(16))

    def forward(self, x):
        xq = torch.ops.bitfold.fake_quantize(x, "e2m1", self.a_scale, None, None, None)
        y = torch.ops.bitfold.quantized_linear(
            xq, self.packed, "e2m1", 16, 32, self.w_scale, None, None, self.shift, self.bias
        )
        return torch.ops.bitfold.fake_quantize(y, "mxfp8", None, -1, None, None)


def test_ops_survive_torch_export():
    torch.manual_seed(3)
    model = _Quantized()
    x = torch.randn(2, 7, 32)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.bitfold.fake_quantize.default) == 2
    assert targets.count(torch.ops.bitfold.quantized_linear.default) == 1
    out = ep.module()(x)
    assert torch.equal(out, model(x))
    x5 = torch.randn(5, 7, 32)
    assert torch.equal(ep.module()(x5), model(x5))
