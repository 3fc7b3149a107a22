"""Codebook formats: NF4 levels and power-of-√2 (POST)."""

import math

import pytest
import torch

from bitfold.ir import formats
from bitfold.ir.formats.codebook import nf4_quantile_levels

# QLoRA's published NF4 table (bitsandbytes), used as the reference for our construction.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def test_nf4_levels_are_the_published_table():
    assert formats.get("nf4").grid.tolist() == torch.tensor(PUBLISHED_NF4).tolist()


def test_nf4_table_is_the_normal_quantile_construction():
    rebuilt = nf4_quantile_levels()
    torch.testing.assert_close(rebuilt, torch.tensor(PUBLISHED_NF4), rtol=0, atol=1.2e-7)


def test_nf4_codes_are_ascending_indices():
    f = formats.get("nf4")
    codes = f.encode(f.grid)
    assert codes.tolist() == list(range(16))


@pytest.mark.parametrize("bits", range(3, 9))
def test_post_levels_are_powers_of_sqrt2(bits):
    grid = formats.get(f"post{bits}").grid
    pos = grid[grid > 0].double()
    assert grid.numel() == 2**bits - 1 and float(pos.max()) == 1.0
    ratios = pos[1:] / pos[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, math.sqrt(2)))


@pytest.mark.parametrize("name", ["nf4", "post4", "post3"])
def test_nearest_level_and_even_index_ties(name):
    f = formats.get(name)
    grid = f.grid
    x = torch.linspace(-1.5, 1.5, 100_001)
    q = f.quantize(x)
    brute = grid[(x[:, None] - grid[None, :]).abs().argmin(1)]
    assert torch.equal((q - x).abs(), (brute - x).abs())
    mids = (grid[:-1] + grid[1:]) / 2
    # Only exact ties are ambiguous; of two equidistant levels the even index wins.
    exact = ((mids - grid[:-1]) == (grid[1:] - mids))
    idx = torch.arange(grid.numel() - 1)
    expected = torch.where(idx % 2 == 0, grid[:-1], grid[1:])
    assert torch.equal(f.quantize(mids)[exact], expected[exact])


def test_codebook_roundtrip_with_group_scales():
    f = formats.get("nf4")
    w = torch.randn(8, 256)
    absmax = w.abs().unflatten(1, (4, 64)).amax(-1)
    codes = f.encode(w, absmax, axis=1, group_size=64)
    torch.testing.assert_close(f.decode(codes, absmax, axis=1, group_size=64),
                               f.quantize(w, absmax, axis=1, group_size=64))
