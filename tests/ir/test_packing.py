"""Bit packing: layout and round trips for every width."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitfold.ir import formats


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8]), n=st.integers(0, 5000), seed=st.integers(0, 2**31))
def test_roundtrip(bits, n, seed):
    codes = torch.from_numpy(np.random.default_rng(seed).integers(0, 2**bits, n).astype(np.uint8))
    packed = formats.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == formats.packed_size(n, bits) == -(-n * bits // 8)
    assert torch.equal(formats.unpack(packed, bits, n), codes)


def test_4bit_low_nibble_first():
    assert formats.pack(torch.tensor([0x1, 0x2, 0x3, 0xF, 0x5]), 4).tolist() == [0x21, 0xF3, 0x05]


def test_2bit_layout():
    assert formats.pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]


def test_3bit_and_6bit_bitstream():
    # 3-bit codes 1..8 mod 8 as a little-endian bit stream
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    assert formats.pack(codes, 3).tolist() == list(stream.to_bytes(3, "little"))
    codes6 = torch.tensor([63, 1, 32, 7])
    stream6 = sum(int(c) << (6 * i) for i, c in enumerate(codes6))
    assert formats.pack(codes6, 6).tolist() == list(stream6.to_bytes(3, "little"))


def test_int4_codes_pack_like_onnx():
    """ONNX INT4: two's-complement nibbles, first element in the low nibble."""
    import ml_dtypes
    from onnx import numpy_helper

    values = np.array([-8, 7, -1, 3, 0], dtype=np.int64)
    codes = formats.get("int4").encode(torch.from_numpy(values.astype(np.float32)))
    onnx_bytes = numpy_helper.from_array(values.astype(ml_dtypes.int4)).raw_data
    assert formats.pack(codes, 4).tolist() == list(onnx_bytes)


def test_errors():
    with pytest.raises(formats.FormatError, match="codes must lie"):
        formats.pack(torch.tensor([16]), 4)
    with pytest.raises(formats.FormatError, match="need 3 bytes"):
        formats.unpack(torch.zeros(2, dtype=torch.uint8), 4, 6)
    with pytest.raises(formats.FormatError, match="1 to 8 bits"):
        formats.pack(torch.tensor([1]), 9)
