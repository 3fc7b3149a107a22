"""CPU kernels (fp32 activations) against bitfold::quantized_linear, on odd shapes.

Every case builds one kernel with a symbolic row count and runs it for M = 1 (the GEMV
code) and M > 1 (the GEMM code, including rows left over after its 4-row blocks). Shapes
are not multiples of the vector width (8), the tile (32) or the group size.
"""

import zlib

import numpy as np
import pytest
import torch
import tvm

from bitfold.codegen import KernelError, LinearKernelSpec, build_linear_kernel, cpu_gemv, host_cpu_target

from ._helpers import Kernel, random_layer, rel_error

pytestmark = pytest.mark.slow
TOL = 1e-4

CASES = [
    # fmt, N, K, group, zero point, shift, bias
    ("int4", 67, 200, None, False, False, False),
    ("int4", 100, 130, 32, True, True, True),
    ("uint4", 45, 96, 40, True, False, True),
    ("int2", 33, 77, 16, True, True, False),
    ("int3", 45, 129, 32, True, False, True),
    ("int8", 40, 50, None, True, False, True),
    ("e2m1", 50, 90, None, False, True, True),
    ("e3m0", 36, 70, 24, False, False, False),
    ("nf4", 50, 90, 32, False, False, True),
    ("e2m0", 41, 61, None, False, False, False),
    ("fp8_e4m3", 40, 70, None, False, True, True),
    ("mxfp4", 39, 100, None, False, False, False),
]


@pytest.fixture(scope="module")
def target():
    return host_cpu_target()


def _check(kernel, layer, rows, seed=1):
    gen = torch.Generator().manual_seed(seed)
    arrays = layer.arrays()
    for m in rows:
        x = torch.randn(m, layer.spec.in_features, generator=gen) * 3
        err = rel_error(kernel(x.numpy(), arrays), layer.reference(x))
        assert err <= TOL, f"{layer.spec.describe()}, M={m}: relative error {err:.3g}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c[:4]))
def test_kernel_matches_the_op(case, target):
    layer = random_layer(*case, seed=zlib.crc32(repr(case).encode()) % 1000)
    _check(Kernel(layer.spec, target), layer, rows=(1, 7))


def test_random_shapes(target):
    rng = np.random.default_rng(7)
    for fmt in ("int4", "e2m1"):
        n, k = (int(v) for v in rng.integers(9, 150, 2))
        group = int(rng.integers(5, k + 1))
        layer = random_layer(fmt, n, k, group, fmt == "int4", True, True, seed=int(n))
        _check(Kernel(layer.spec, target), layer, rows=(1, 10))


def test_layers_large_enough_for_parallel_tiles(target):
    """N·K above the thresholds of :func:`bitfold.codegen.cpu_gemv.tile_loop`: tiles run on the pool."""
    layer = random_layer("int4", 1100, 2000, 64, True, True, True, seed=9)
    assert 1100 * 2000 >= cpu_gemv.GEMV_PARALLEL_MIN_WEIGHTS
    kernel = Kernel(layer.spec, target)
    assert "parallel" in kernel.func.script()
    _check(kernel, layer, rows=(1, 3))


@pytest.mark.parametrize("fmt,group,zp", [("int4", 32, True), ("e2m1", None, False), ("nf4", None, False)])
def test_portable_kernels_without_avx2(fmt, group, zp):
    """A plain x86-64 target (no AVX2) gets gathers instead of vpshufb/vpermps; same numbers."""
    layer = random_layer(fmt, 35, 75, group, zp, True, True, seed=5)
    _check(Kernel(layer.spec, tvm.target.Target({"kind": "llvm"})), layer, rows=(1, 3))


def test_static_row_counts_and_fp16_activations(target):
    layer = random_layer("int4", 40, 72, 24, True, True, True, seed=11)
    _check(Kernel(layer.spec, target, m=1), layer, rows=(1,))
    _check(Kernel(layer.spec, target, m=6), layer, rows=(6,))
    half = random_layer("e2m1", 40, 72, None, False, False, True, seed=12, act_dtype="float16")
    kernel = Kernel(half.spec, target)
    x = torch.randn(5, 72, dtype=torch.float16)
    got = kernel(x.numpy(), half.arrays())
    assert got.dtype == np.float16
    assert rel_error(got, half.reference(x).astype(np.float64)) <= 2e-3  # one fp16 rounding of y


def test_unsupported_requests_are_named(target):
    spec = LinearKernelSpec("int4", 8, 16, None, False, False, False)
    with pytest.raises(KernelError, match="no kernels for target kind 'c'"):
        build_linear_kernel(spec, tvm.target.Target({"kind": "c"}))
    with pytest.raises(KernelError, match="number of rows must be positive, got 0"):
        build_linear_kernel(spec, target, m=0)
    a8 = LinearKernelSpec("int4", 8, 16, None, False, False, False, int8_activations=True)
    with pytest.raises(KernelError, match="int8-activation variant is CPU-only"):
        build_linear_kernel(a8, tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    with pytest.raises(KernelError, match="needs an x86 target with AVX2"):
        build_linear_kernel(a8, tvm.target.Target({"kind": "llvm"}))
