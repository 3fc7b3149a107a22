"""The compiled codebook kernel (SplitQuant in one pass) against bitfold::codebook_linear."""

import numpy as np
import pytest
import torch
import tvm

import bitfold
from bitfold.codegen import KernelError, host_cpu_target
from bitfold.codegen.codebook_linear import (
    build_codebook_kernel, codebook_kernel_from_node, codebook_kernel_inputs, codebook_spec, compile_codebook_kernel,
)
from bitfold.codegen.vector import has_avx2
from bitfold.ir import formats, ops

from ._helpers import rel_error

pytestmark = pytest.mark.slow


def codebook(fmt: str, n: int, k: int, clusters: int, seed: int = 0) -> ops.CodebookWeight:
    """Value quantiles per row as clusters, each quantized with its own asymmetric range (incl. 0)."""
    f = formats.get(fmt)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * torch.exp2(torch.randint(-2, 3, (n, 1), generator=gen).float())
    edges = torch.quantile(w, torch.linspace(0, 1, clusters + 1)[1:-1], dim=1).T.contiguous()
    ids = torch.searchsorted(edges, w.contiguous())
    codes, scales, zeros = [], [], []
    for c in range(clusters):
        part = torch.where(ids == c, w, torch.zeros(()))
        lo, hi = part.amin(1).clamp(max=0), part.amax(1).clamp(min=0)
        s = ((hi - lo) / (f.qmax - f.qmin)).clamp_min(1e-8)
        z = torch.round(f.qmin - lo / s).clamp(f.qmin, f.qmax)
        codes.append(f.encode(part, s, axis=0, zero_point=z))
        scales.append(s)
        zeros.append(z)
    return ops.codebook_from_codes(torch.stack(codes).gather(0, ids[None])[0], ids, fmt, torch.stack(scales),
                                   zero_point=torch.stack(zeros))


def run(lib, name, x, arrays, n):
    y = np.zeros((x.shape[0], n), np.float32)
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in (x, *arrays, y)]
    lib[name](*args)
    return args[-1].numpy()


@pytest.fixture(scope="module")
def target():
    target = host_cpu_target()
    if not has_avx2(target):
        pytest.skip("the codebook kernels need an x86 CPU with AVX2")
    return target


@pytest.mark.parametrize("fmt,n,k,clusters,shift,bias", [
    ("uint2", 37, 203, 3, True, True), ("uint2", 64, 128, 4, False, False), ("uint3", 19, 70, 2, False, True),
])
def test_kernel_matches_the_op(target, fmt, n, k, clusters, shift, bias):
    weight = codebook(fmt, n, k, clusters)
    gen = torch.Generator().manual_seed(1)
    k_shift = torch.randint(-2, 3, (k,), dtype=torch.int32, generator=gen) if shift else None
    b = torch.randn(n, generator=gen) if bias else None
    spec = codebook_spec(weight, shift, bias)
    lib = compile_codebook_kernel(spec, target)
    arrays = codebook_kernel_inputs(spec, weight, k_shift, b)
    for m in (1, 9):  # the GEMV and the GEMM code, a last block of channels only partly used
        x = torch.randn(m, k, generator=gen) * 2
        want = torch.ops.bitfold.codebook_linear(x, weight.packed_codes, weight.packed_ids, fmt, n, k, clusters,
                                                 weight.scale, None, weight.zero_point, k_shift, b).numpy()
        assert rel_error(run(lib, spec.name(None), x.numpy(), arrays, n), want) < 1e-5


def test_kernel_from_a_quantized_graph(target):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40)).eval()
    q = bitfold.quantize(model, "w2a16-int-split", [(torch.randn(4, 48),)], progress=False)
    node = next(n for n in q.graph_module.graph.nodes if n.target is torch.ops.bitfold.codebook_linear.default)
    spec, arrays = codebook_kernel_from_node(node, q.graph_module)
    x = torch.randn(3, 48)
    got = run(compile_codebook_kernel(spec, target, m=3), spec.name(3), x.numpy(), arrays, 40)
    assert rel_error(got, q(x).numpy()) < 1e-5


def test_unsupported_requests_are_named(target):
    with pytest.raises(KernelError, match="take 5 bits"):
        codebook_spec(codebook("uint3", 8, 16, 3), False, False)
    with pytest.raises(KernelError, match="AVX2"):
        build_codebook_kernel(codebook_spec(codebook("uint2", 8, 16, 3), False, False),
                              {"kind": "llvm", "mcpu": "x86-64"})
