"""The block-scale search for block-format weights: never worse than MinMax, stores only
representable scales, and finds the exact scale where one exists."""

import pytest
import torch

from bitfold.ir import formats
from bitfold.ir.formats.block import FP8_E4M3
from bitfold.passes.block_scales import search_block_scales


def _weighted_error(W, fmt, scale, energy):
    q = fmt.element.quantize(W, scale, axis=1, group_size=fmt.block_size)
    return float(((q - W).pow(2) * energy).sum())


@pytest.mark.parametrize("name, at_most", [("nvfp4", 0.8), ("mxfp4", 0.97), ("mxfp6_e2m3", 1.0)])
def test_never_worse_than_minmax_and_only_representable_scales(name, at_most):
    fmt = formats.get(name)
    torch.manual_seed(0)
    W = torch.randn(48, 100) * torch.exp(torch.randn(48, 1))       # a ragged last block, rows of all sizes
    energy = torch.rand(100) ** 4
    minmax, found = fmt.block_scales(W, axis=1), search_block_scales(W, fmt, energy)
    assert found.shape == minmax.shape
    assert _weighted_error(W, fmt, found, energy) < at_most * _weighted_error(W, fmt, minmax, energy)
    if fmt.scale_kind == "e8m0":
        fmt.scale_codes(found)                                       # raises unless powers of two
    else:
        ratio = found / fmt.tensor_scale(W)
        assert torch.equal(FP8_E4M3.quantize(ratio), ratio)


def test_nvfp4_finds_the_scale_that_puts_a_block_on_the_grid():
    fmt = formats.get("nvfp4")
    on_grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, -4.0] * 2)   # max 4: MinMax maps it to 6
    W = torch.cat([on_grid, torch.linspace(-6, 6, 16)])[None]               # the tensor scale is 6 / (6·448)
    found = search_block_scales(W, fmt)
    q = fmt.element.quantize(W, found, axis=1, group_size=16)
    assert torch.equal(q[0, :16], on_grid)
    minmax = fmt.element.quantize(W, fmt.block_scales(W, axis=1), axis=1, group_size=16)
    assert not torch.equal(minmax[0, :16], on_grid)


def test_mx_takes_the_larger_power_of_two_when_minmax_clips_hard():
    fmt = formats.get("mxfp4")
    W = torch.zeros(1, 32)
    W[0, 0] = 7.9                                  # MinMax: X = 1, so 7.9 saturates to 6
    W[0, 1:] = 0.25
    found = search_block_scales(W, fmt)
    assert float(found[0, 0]) == 2.0 * float(fmt.block_scales(W, axis=1)[0, 0])


def test_energy_decides_which_columns_count():
    fmt = formats.get("nvfp4")
    torch.manual_seed(1)
    W = torch.randn(8, 64)
    focus = torch.zeros(64)
    focus[5] = 1.0
    found = search_block_scales(W, fmt, focus)
    col = lambda s: fmt.element.quantize(W, s, axis=1, group_size=16)[:, 5]  # noqa: E731
    assert float((col(found) - W[:, 5]).abs().max()) <= float((col(fmt.block_scales(W, axis=1)) - W[:, 5]).abs().max())
