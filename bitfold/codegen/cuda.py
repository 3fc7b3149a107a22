"""CUDA kernels (in progress): not generated yet."""

from bitfold.codegen.spec import KernelError


def emit_cuda(a, m):
    raise KernelError(f"{a.spec.describe()}: CUDA kernels are not generated yet")
