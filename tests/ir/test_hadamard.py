"""``bitfold::hadamard`` against the Hadamard matrix in float64, and its helpers."""

import pytest
import torch

from bitfold.ir import ops  # noqa: F401  (registers the bitfold ops)
from bitfold.ir.hadamard import HadamardError, check_block, hadamard_matrix, largest_block, rotate_rows


@pytest.mark.parametrize("block", [2, 8, 64, 512])
def test_matrix_is_orthogonal_and_symmetric(block):
    h = hadamard_matrix(block)
    assert torch.equal(h, h.T)
    assert torch.allclose(h @ h, torch.eye(block, dtype=torch.float64), atol=1e-12)
    assert torch.all(h.abs() == h[0, 0].abs())


@pytest.mark.parametrize("block,width", [(2, 2), (16, 48), (512, 1536)])
def test_op_is_the_block_diagonal_product(block, width):
    torch.manual_seed(block)
    x = torch.randn(3, 5, width)
    want = (x.double().reshape(3, 5, width // block, block) @ hadamard_matrix(block).T).reshape(3, 5, width)
    got = torch.ops.bitfold.hadamard(x, block)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert float((got.double() - want).abs().max()) < 2e-6 * float(want.abs().max())
    back = torch.ops.bitfold.hadamard(got, block)  # H H = I
    assert torch.allclose(back, x, atol=1e-5)


def test_an_outlier_channel_is_spread_over_its_block():
    x = torch.zeros(1, 64)
    x[0, 3] = 100.0
    y = torch.ops.bitfold.hadamard(x, 32)
    assert torch.allclose(y[0, :32].abs(), torch.full((32,), 100.0 / 32**0.5))
    assert torch.equal(y[0, 32:], torch.zeros(32))


def test_other_dtypes_round_trip_through_float32():
    x = torch.randn(4, 16)
    y = torch.ops.bitfold.hadamard(x.to(torch.bfloat16), 16)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), torch.ops.bitfold.hadamard(x.to(torch.bfloat16).float(), 16).bfloat16().float())


def test_counter_rotated_weight_gives_the_same_linear():
    torch.manual_seed(0)
    w, x = torch.randn(24, 96), torch.randn(7, 96)
    rotated = rotate_rows(w, 32)
    assert torch.allclose(torch.ops.bitfold.hadamard(x, 32) @ rotated.T, x @ w.T, atol=1e-4)


@pytest.mark.parametrize("width,limit,block", [(1536, 512, 512), (384, 512, 128), (576, 512, 64), (96, 16, 16),
                                               (7, 512, 1), (1536, 300, 256)])
def test_largest_block(width, limit, block):
    assert largest_block(width, limit) == block


@pytest.mark.parametrize("block,width,message", [(3, 6, "power of two"), (1, 4, "power of two"),
                                                 (8, 12, "12 channels is not a whole number of 8-channel blocks")])
def test_bad_blocks_are_refused(block, width, message):
    with pytest.raises(HadamardError, match=message):
        check_block(block, width)
    with pytest.raises(HadamardError, match=message):
        torch.ops.bitfold.hadamard(torch.zeros(2, width), block)
