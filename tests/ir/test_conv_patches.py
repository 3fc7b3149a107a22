"""A convolution as a product over its input patches: exact for every geometry, and the op built on it."""

import pytest
import torch

from bitfold.ir import from_torch, ops
from bitfold.ir.conv_patches import CONV2D, ConvGeometry, grouped_product, patch_rows

GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation, groups)
    (6, 8, 3, 1, 1, 1, 1),
    (6, 8, 3, 2, 0, 1, 1),
    (6, 6, 5, 1, 2, 1, 6),      # depthwise
    (6, 4, 3, 2, 1, 2, 2),      # grouped, strided, dilated
    (6, 10, 1, 1, 0, 1, 1),     # pointwise: the pixel fast path
    (6, 10, 1, 2, 0, 1, 1),     # strided pointwise
    (6, 10, 1, 1, 1, 1, 1),     # padded pointwise: through unfold
]


def _captured(conv: torch.nn.Conv2d, x: torch.Tensor):
    gm = from_torch(conv.eval(), (x,))
    node = next(n for n in gm.graph.nodes if n.target == CONV2D)
    return node, conv.weight.detach()


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups", GEOMETRIES)
def test_patch_rows_times_weight_rows_is_the_convolution(cin, cout, k, stride, pad, dil, groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, k, stride, pad, dil, groups, bias=False).double()
    x = torch.randn(2, cin, 11, 9, dtype=torch.float64)
    node, weight = _captured(conv.float(), x.float())
    geometry = ConvGeometry.of(node, weight)
    assert geometry == ConvGeometry(cout, cin, (k, k), (stride,) * 2, (pad,) * 2, (dil,) * 2, groups)
    assert geometry.in_features == cin // groups * k * k
    assert geometry.pointwise == (k == 1 and groups == 1)
    rows, group = patch_rows(x, geometry)
    y = conv.double()(x)                                             # [B, N, H, W]
    per_row = grouped_product(rows, weight.double().reshape(cout, -1), group, groups)   # [B·P·G, N/G]
    b, n, h, w = y.shape
    want = y.reshape(b, groups, n // groups, h * w).permute(0, 3, 1, 2).reshape(-1, n // groups)
    torch.testing.assert_close(per_row, want, rtol=1e-12, atol=1e-12)
    if groups == 1:
        assert group is None
    else:
        assert group.tolist()[:groups] == list(range(groups))


def test_geometry_names_itself_and_rejects_other_nodes():
    conv = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    node, weight = _captured(conv, torch.randn(1, 8, 8, 8))
    geometry = ConvGeometry.of(node, weight)
    assert geometry.describe() == "3x3/s2 depthwise"
    assert geometry.key() == "conv3x3s2x2p1x1d1x1g8"
    with pytest.raises(ValueError, match="not a 2-D convolution"):
        ConvGeometry.of(node.args[0], weight)
    with pytest.raises(ValueError, match="8 channels"):
        patch_rows(torch.randn(1, 3, 8, 8), geometry)


@pytest.mark.parametrize("fmt,group_size", [("int4", None), ("uint4", 9), ("e2m1", None)])
@pytest.mark.parametrize("groups", [1, 4])
def test_quantized_conv2d_is_the_convolution_of_the_decoded_weight(fmt, group_size, groups):
    torch.manual_seed(1)
    w = torch.randn(8, 8 // groups, 3, 3)
    flat = w.reshape(8, -1)
    if group_size is None:
        scale = flat.abs().amax(1) / (7 if fmt == "int4" else 6)
        zero = None
    else:
        g = flat.unflatten(1, (-1, group_size))
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale, zero = (hi - lo) / 15, torch.round(-lo / ((hi - lo) / 15))
    packed = ops.pack_weight(flat, fmt, scale, group_size, zero)
    x, bias = torch.randn(2, 8, 10, 10), torch.randn(8)
    k = torch.randint(0, 4, (8,), dtype=torch.int32)
    y = torch.ops.bitfold.quantized_conv2d(x, packed.packed, fmt, 8, flat.shape[1], packed.scale, group_size, zero, k,
                                           bias, [3, 3], [2, 2], [1, 1], [1, 1], groups)
    w_hat = packed.unpack().reshape(w.shape)
    want = torch.nn.functional.conv2d(x * torch.exp2(-k.float()).reshape(1, -1, 1, 1), w_hat, bias, 2, 1, 1, groups)
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_quantized_conv2d_names_a_mismatched_input():
    packed = ops.pack_weight(torch.randn(4, 27), "int8", torch.ones(4))
    with pytest.raises(ValueError, match="kernel 3x3, groups 1"):
        torch.ops.bitfold.quantized_conv2d(torch.randn(1, 4, 8, 8), packed.packed, "int8", 4, 27, packed.scale, None,
                                           None, None, None, [3, 3], [1, 1], [0, 0], [1, 1], 1)
