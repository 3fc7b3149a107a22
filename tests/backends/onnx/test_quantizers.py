"""Every format's ONNX quantizer against bitfold's PyTorch quantizer, value for value."""

import numpy as np
import pytest
import torch

from bitfold.backends.onnx.native_qdq import native_type
from bitfold.backends.onnx.quantize_points import QuantizePoint, emit_quantizer
from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat, FloatFormat

from ._graphs import build_model, run

SCALAR_FORMATS = [n for n in formats.names() if n not in formats.ALIASES
                  and not isinstance(formats.get(n), BlockFormat)]
BLOCK_FORMATS = [n for n in formats.names() if n not in formats.ALIASES and isinstance(formats.get(n), BlockFormat)]


def hard_inputs(fmt, scale: float, seed: int = 0) -> np.ndarray:
    """Values spread over many binades, plus grid points, exact midpoints between them, zeros, saturation."""
    rng = np.random.default_rng(seed)
    grid = fmt.grid.numpy().astype(np.float64)
    mids = (grid[1:] + grid[:-1]) / 2
    spread = rng.standard_normal(4000) * np.exp2(rng.uniform(-12, 4, 4000)) * float(fmt.max)
    values = np.concatenate([grid, mids, -mids, [0.0, -0.0, 3 * fmt.max, -3 * fmt.max], spread / 4])
    return (values * scale).astype(np.float32).reshape(1, -1)


def onnx_quantize(qp: QuantizePoint, x: np.ndarray) -> np.ndarray:
    model = build_model(lambda em, lib, name: emit_quantizer(em, lib, name, qp, list(x.shape), "test"), x.shape)
    return run(model, {"x": x})


@pytest.mark.parametrize("name", SCALAR_FORMATS)
def test_per_tensor_quantizer_is_exact(name):
    fmt = formats.get(name)
    scale = 0.0371 if not isinstance(fmt, FloatFormat) else float(fmt.scale_for_bias(fmt.bias + 0.37))
    x = hard_inputs(fmt, scale)
    want = fmt.quantize(torch.from_numpy(x), torch.tensor(scale)).numpy()
    got = onnx_quantize(QuantizePoint(fmt, np.float32(scale)), x)
    mismatch = np.flatnonzero(got != want)
    assert mismatch.size == 0, f"{name}: {mismatch.size} values differ, e.g. x={x.ravel()[mismatch[:3]]} " \
                               f"onnx={got.ravel()[mismatch[:3]]} torch={want.ravel()[mismatch[:3]]}"


@pytest.mark.parametrize("name", ["e2m1", "e3m0", "e1m2", "e4m3", "e5m2", "fp8_e4m3", "e3m4"])
def test_float_quantizer_is_exact_at_binade_edges(name):
    """Powers of two and their float32 neighbours, at a power-of-two scale so they reach the grid exactly."""
    fmt = formats.get(name)
    p = np.ldexp(np.float32(1), np.arange(-30, 20)).astype(np.float32)
    x = np.concatenate([p, np.nextafter(p, np.float32(0)), np.nextafter(p, np.float32(np.inf)), -p]) * np.float32(0.125)
    x = x.astype(np.float32).reshape(1, -1)
    want = fmt.quantize(torch.from_numpy(x), torch.tensor(0.125)).numpy()
    assert np.array_equal(onnx_quantize(QuantizePoint(fmt, np.float32(0.125)), x), want)


@pytest.mark.parametrize("name", ["int8", "uint8", "int4", "uint4", "uint3", "int6"])
def test_zero_point_quantizer_is_exact(name):
    fmt = formats.get(name)
    x = hard_inputs(fmt, 0.05, seed=1)
    zero = float(fmt.qmin + 3)
    want = fmt.quantize(torch.from_numpy(x), torch.tensor(0.05), zero_point=torch.tensor(zero)).numpy()
    got = onnx_quantize(QuantizePoint(fmt, np.float32(0.05), np.float32(zero)), x)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("name", ["int8", "e2m1", "nf4", "fp8_e4m3", "uint4"])
def test_per_channel_and_per_group_quantizers_are_exact(name):
    fmt = formats.get(name)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((6, 40)) * 3).astype(np.float32)
    channel = (rng.uniform(0.5, 2.0, 6) * 3 / fmt.max).astype(np.float32)
    want = fmt.quantize(torch.from_numpy(x), torch.from_numpy(channel), axis=0).numpy()
    assert np.array_equal(onnx_quantize(QuantizePoint(fmt, channel, axis=0), x), want)
    group = (rng.uniform(0.5, 2.0, (6, 3)) * 3 / fmt.max).astype(np.float32)  # groups of 16, the last ragged
    want = fmt.quantize(torch.from_numpy(x), torch.from_numpy(group), axis=1, group_size=16).numpy()
    assert np.array_equal(onnx_quantize(QuantizePoint(fmt, group, axis=1, group_size=16), x), want)


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_block_quantizer_is_exact(name):
    fmt = formats.get(name)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 2, 70)) * np.exp2(rng.uniform(-6, 6, (3, 2, 1)))).astype(np.float32)
    x[0, 0, :40] = 0.0  # an all-zero block
    want = fmt.quantize(torch.from_numpy(x)).numpy()
    assert np.array_equal(onnx_quantize(QuantizePoint(fmt, None), x), want)
    want = fmt.quantize(torch.from_numpy(x), axis=1).numpy()
    assert np.array_equal(onnx_quantize(QuantizePoint(fmt, None, axis=1), x), want)


def test_native_qdq_is_used_only_for_types_onnx_runtime_implements():
    assert native_type(formats.get("int4")) is not None and native_type(formats.get("fp8_e4m3")) is not None
    for name in ("e2m1", "fp4_e2m1", "e4m3", "e5m2", "int2", "int3", "nf4"):
        assert native_type(formats.get(name)) is None, name
    model = build_model(lambda em, lib, x: emit_quantizer(em, lib, x, QuantizePoint(formats.get("int4"),
                                                                                    np.float32(0.1)), [4], "t"), [4])
    assert [n.op_type for n in model.graph.node][:2] == ["QuantizeLinear", "DequantizeLinear"]
    model = build_model(lambda em, lib, x: emit_quantizer(em, lib, x, QuantizePoint(formats.get("e2m1"),
                                                                                    np.float32(0.1)), [4], "t"), [4])
    assert model.graph.node[0].domain == "bitfold.quant" and model.functions[0].name == "FakeQuantize_e2m1"
