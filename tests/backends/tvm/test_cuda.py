"""CUDA (sm_90): whole graphs lower to CUDA source that nvcc compiles, on a machine without a
GPU, so that codegen breakage shows up in CI. Running the kernels needs a GPU."""

import os
import shutil

import pytest

from bitfold.backends.tvm import compile
from bitfold.backends.tvm.build import cuda_source

pytestmark = pytest.mark.slow
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
TARGET = "cuda -arch=sm_90"


@pytest.fixture
def nvcc(monkeypatch):
    """nvcc on PATH, in the exact (no fast-math) mode the backend runs CUDA kernels with."""
    monkeypatch.setenv("PATH", os.path.dirname(NVCC) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("TVM_CUDA_NVCC_NO_FAST_MATH", "1")


def _compile_with_nvcc(cm, at_least: int) -> str:
    """The module's CUDA C, compiled by nvcc to an sm_90 fatbin the way TVM's runtime does."""
    import tvm.support.nvcc as tvm_nvcc

    source = cuda_source(cm.executable)
    assert source.count("__global__") >= at_least
    assert "threadIdx.x" in source and "blockIdx.x" in source
    with cm.target:
        fatbin = tvm_nvcc.compile_cuda(source, target_format="fatbin", arch="sm_90", compiler="nvcc")
    assert len(fatbin) > 10_000, "nvcc produced no sm_90 binary"
    return source


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_whole_minilm_compiles_to_cuda_with_nvcc(minilm_graph, nvcc, tmp_path):
    cm = compile(minilm_graph, TARGET)
    _compile_with_nvcc(cm, at_least=15)
    exported = cm.export(tmp_path / "minilm_cuda")  # cross-compiled: no GPU needed to export
    assert (exported / "model.so").stat().st_size > 10_000


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_quantized_minilm_compiles_to_cuda_with_low_bit_kernels(minilm_w4a4, nvcc):
    _, quantized = minilm_w4a4
    source = _compile_with_nvcc(compile(quantized, TARGET), at_least=10)
    assert "bitfold_linear_int4" in source  # bitfold.codegen's packed-weight kernels
    assert "fake_quantize" in source


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_quantized_convolutions_compile_to_cuda(nvcc):
    import torch

    import bitfold

    class Cnn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = torch.nn.Conv2d(8, 2048, 1)   # 8 KiB of packed codes: a parameter, decoded at run time

        def forward(self, x):
            return self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))

    torch.manual_seed(0)
    data = [torch.randn(1, 3, 16, 16)]
    quantized = bitfold.quantize(Cnn().eval(), "w4a4-int", data, progress=False)
    source = _compile_with_nvcc(compile(quantized, TARGET, example_inputs=(data[0],)), at_least=4)
    assert "decode_conv_weight" in source and "fake_quantize" in source and "conv2d" in source


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_hadamard_rotation_compiles_to_cuda(nvcc):
    import torch

    class Rotated(torch.nn.Module):
        def forward(self, x):
            return torch.ops.bitfold.hadamard(x, 512) * 2.0

    x = torch.randn(2, 7, 1536)
    source = _compile_with_nvcc(compile(Rotated().eval(), TARGET, example_inputs=(x,)), at_least=1)
    assert "bitfold_hadamard512" in source
