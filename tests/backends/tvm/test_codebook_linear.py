"""SplitQuant through TVM: a split-quantized model compiles to codebook kernels and matches PyTorch."""

import os

import numpy as np
import pytest
import torch

import bitfold
from bitfold.backends.tvm import LoweringError, compile
from bitfold.codegen import host_cpu_target
from bitfold.codegen.vector import has_avx2

pytestmark = pytest.mark.slow
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def _quantized(recipe: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 72), torch.nn.GELU(), torch.nn.Linear(72, 24)).eval()
    return bitfold.quantize(model, recipe, [(torch.randn(3, 40),) for _ in range(3)], progress=False)


def test_split_model_compiles_to_codebook_kernels_and_agrees():
    target = host_cpu_target()
    if not has_avx2(target):
        pytest.skip("the codebook kernels need an x86 CPU with AVX2")
    q = _quantized("w2a16-int-split")
    name = next(n.name for n in q.graph_module.graph.nodes if n.op == "placeholder")
    compiled = compile(q, target, example_inputs=(torch.randn(2, 40),), dynamic_dims={name: {0: "rows"}})
    for rows in (1, 5):  # GEMV and GEMM code of the same build
        x = torch.randn(rows, 40)
        got = np.asarray(compiled(x.numpy()))
        want = q(x).numpy()
        assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5


def test_a_codebook_layer_without_a_kernel_is_an_error_not_a_dense_fallback():
    q = _quantized("w3a16-int-split")  # 3-bit codes + 2-bit cluster ids: 5 bits, no kernel
    with pytest.raises(LoweringError, match=r"no codebook kernel.*take 5 bits"):
        compile(q, host_cpu_target(), example_inputs=(torch.randn(2, 40),))
