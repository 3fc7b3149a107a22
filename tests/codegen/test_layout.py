"""Word layout and decode plans: pure numpy, no kernel builds."""

import numpy as np
import pytest

from bitfold.codegen import KernelError, decode_plan
from bitfold.codegen.layout import TILE, WordLayout, pack_bit_planes
from bitfold.ir import formats


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n,k,group,multiple", [(37, 101, 101, 1), (64, 96, 32, 1), (33, 130, 48, 4), (5, 7, 3, 2)])
def test_pack_unpack_round_trip(bits, n, k, group, multiple):
    layout = WordLayout(bits, n, k, group, multiple)
    codes = np.random.default_rng(bits).integers(0, 2**bits, (n, k)).astype(np.uint8)
    words = layout.pack(codes)
    assert words.shape == (layout.tiles, layout.words, TILE) and words.dtype == np.uint32
    assert layout.words_per_group % multiple == 0
    np.testing.assert_array_equal(layout.unpack(words), codes)


def test_word_holds_consecutive_codes_of_one_channel():
    layout = WordLayout(4, 40, 20, 20)
    codes = np.zeros((40, 20), dtype=np.uint8)
    codes[33, 9] = 5  # tile 1, lane 1; word 1 (codes 8..15 of the group), field 1
    words = layout.pack(codes)
    assert words[1, 1, 1] == 5 << 4
    assert np.count_nonzero(words) == 1
    # 20 inputs in words of 8: the group takes 3 words, the last half filled.
    slots = layout.slot_to_channel()
    assert layout.words_per_group == 3 and list(slots[16:24]) == [16, 17, 18, 19, -1, -1, -1, -1]


def test_ragged_last_group_pads_slots_and_params():
    layout = WordLayout(2, 3, 50, 32)  # groups of 32 and 18 inputs
    slots = layout.slot_to_channel()
    assert layout.groups == 2 and layout.group_length(1) == 18
    assert list(slots[layout.slots_per_group: layout.slots_per_group + 19]) == list(range(32, 50)) + [-1]
    params = layout.tile_params(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert params.shape == (1, 2, TILE)
    assert params[0, :, :3].T.tolist() == [[0, 1], [2, 3], [4, 5]] and not params[0, :, 3:].any()


def test_integer_formats_store_offset_levels():
    plan = decode_plan("int4")
    assert (plan.kind, plan.offset, plan.value_scale) == ("int", 8, 1.0)
    codes = np.arange(16, dtype=np.uint8)  # two's complement codes of -8..7
    values = formats.get("int4").codes.numpy()
    np.testing.assert_array_equal(plan.stored_codes(codes).astype(int) - plan.offset, values)
    assert decode_plan("uint3").offset == 0 and decode_plan("uint3").table() is None


@pytest.mark.parametrize("fmt,p,offset", [("e2m1", 1, 12), ("fp4_e2m1", 1, 12), ("e3m0", 2, 64), ("e1m2", 1, 7),
                                          ("mxfp4", 1, 12)])
def test_small_integer_float_formats_use_a_byte_table(fmt, p, offset):
    plan = decode_plan(fmt)
    assert (plan.kind, plan.value_scale, plan.offset) == ("byte_table", 2.0**-p, offset)
    values = formats.get(fmt).codes.numpy()
    np.testing.assert_array_equal((plan.levels.astype(float) - offset) * plan.value_scale, values)
    assert plan.table().tolist() == plan.levels.tolist() * 2


@pytest.mark.parametrize("fmt,entries", [("nf4", 16), ("fp8_e4m3", 256), ("e2m0", 8), ("post4", 16)])
def test_other_formats_use_a_float_table(fmt, entries):
    plan = decode_plan(fmt)
    assert plan.kind == "float_table" and not plan.needs_offset_correction
    table = plan.table()
    assert table.size == max(8, entries)
    np.testing.assert_array_equal(table[:entries], formats.get(fmt).codes.numpy())


def test_unknown_format_is_a_kernel_error():
    with pytest.raises(KernelError, match="unknown number format 'int9'"):
        decode_plan("int9")


def test_bit_planes_hold_quad_indices_channel_major():
    layout = WordLayout(4, 40, 64, 64, 4)
    codes = np.zeros((40, 64), dtype=np.uint8)
    codes[33, 13] = 0b1010  # tile 1, half 0, channel 1; quad 3 (odd: high nibble), j = 1; planes 1 and 3
    planes = pack_bit_planes(layout, codes)
    assert planes.shape == (2, 8, 2, 2, TILE) and planes.dtype == np.uint8
    assert planes[1, 1, 0, 0, 2 * 1 + 1] == (1 << 1) << 4  # plane 1 = pair 0, e = 1
    assert planes[1, 1, 1, 0, 2 * 1 + 1] == (1 << 1) << 4  # plane 3 = pair 1, e = 1
    assert np.count_nonzero(planes) == 2


@pytest.mark.parametrize("bits", [2, 4])
def test_bit_planes_recombine_to_the_codes(bits):
    layout = WordLayout(bits, 70, 90, 40, 32 // (32 // bits))
    codes = np.random.default_rng(bits).integers(0, 2**bits, (70, 90)).astype(np.uint8)
    planes = pack_bit_planes(layout, codes)
    nibbles = np.stack([planes & 0x0F, planes >> 4], axis=-1)  # [tile, qp, pp, half, 2c+e, quad parity]
    nibbles = nibbles.reshape(*planes.shape[:4], TILE // 2, 2, 2)
    index = nibbles.transpose(0, 3, 4, 2, 5, 1, 6).reshape(layout.padded_out_features, bits, -1)
    bit = (index[..., None] >> np.arange(4)) & 1  # [channel, plane, quad, j]
    slotted = (bit.reshape(layout.padded_out_features, bits, -1) << np.arange(bits)[:, None]).sum(axis=1)
    slot_k = layout.slot_to_channel()
    np.testing.assert_array_equal(slotted[:70, slot_k >= 0], codes[:, slot_k[slot_k >= 0]])
    assert not slotted[:, slot_k < 0].any() and not slotted[70:].any()


def test_bit_planes_reject_other_widths():
    with pytest.raises(ValueError, match="2- or 4-bit"):
        pack_bit_planes(WordLayout(3, 4, 40, 40, 4), np.zeros((4, 40), np.uint8))
