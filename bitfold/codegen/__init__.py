"""bitfold.codegen: TIR kernels for ``bitfold::quantized_linear`` with the weight decode fused in.

A quantized linear layer computes ``y = (x · 2^-k) Ŵᵀ + b`` where ``Ŵ`` is held as packed
2/3/4/8-bit codes (INT with per-channel or per-group scales and optional zero points; FP4
``e2m1``/``e3m0``/``e1m2`` with per-channel exponent biases folded into the scales; NF4;
FP8; any other table format) and ``k`` is LLM-FP4's per-input-channel exponent shift. The
kernels never materialize ``Ŵ`` in memory: a batch-1 layer reads ~8× fewer bytes than fp32.

The interface the graph lowering (:mod:`bitfold.backends.tvm`) uses::

    spec = spec_from_node(node)                      # node: call of bitfold::quantized_linear
    arrays = kernel_inputs(spec, node, gm)           # weight-side numpy arrays, kernel layout
    func = build_linear_kernel(spec, target, m=None) # tvm.tirx.PrimFunc
    # func(x [M, K], *arrays, y [M, N]): destination-passing, so relax.call_tir works;
    # M is symbolic when m is None (GEMV code for M == 1, GEMM code otherwise).

``kernel_arg_names(spec)`` names the arguments (``x, codes, [table], scales, [zero_points],
[shift], [bias], y``); see :mod:`bitfold.codegen.inputs` for each array's shape and meaning.
``LinearKernelSpec(..., int8_activations=True)`` selects the W4A8/W2A8 CPU variant, which
quantizes activations per block of 32 to int8 inside the kernel (ONNX Runtime's
``accuracy_level=4`` arithmetic); ``lookup_tables=True`` selects the T-MAC-style variant for
2- and 4-bit integer codes, which looks up int8 tables of activation partial sums with the
weights' bit planes. Unsupported formats, shapes or targets raise :class:`KernelError`
naming them.

Modules, one job each: :mod:`~bitfold.codegen.spec` (what a kernel computes),
:mod:`~bitfold.codegen.decode` (code → value per format), :mod:`~bitfold.codegen.layout`
(the interleaved word layout chosen at pack time), :mod:`~bitfold.codegen.inputs` (tensors →
kernel arrays), :mod:`~bitfold.codegen.vector` (explicit AVX2 vectors and intrinsics),
:mod:`~bitfold.codegen.cpu_decode`, :mod:`~bitfold.codegen.cpu_gemv`,
:mod:`~bitfold.codegen.cpu_gemm`, :mod:`~bitfold.codegen.cpu_int8`,
:mod:`~bitfold.codegen.cpu_lut` (CPU kernels),
:mod:`~bitfold.codegen.cuda` (CUDA kernels) and :mod:`~bitfold.codegen.kernel` (the builder).
:mod:`~bitfold.codegen.cpu_softmax` is the one float kernel: a row softmax of dynamic
length, which :mod:`bitfold.backends.tvm` uses for LLVM targets.
"""

from bitfold.codegen.decode import DecodePlan, decode_plan
from bitfold.codegen.inputs import kernel_arg_names, kernel_inputs, kernel_inputs_from_tensors
from bitfold.codegen.kernel import build_linear_kernel, host_cpu_target, kernel_name
from bitfold.codegen.spec import KernelError, LinearKernelSpec, spec_from_node

__all__ = [
    "DecodePlan",
    "KernelError",
    "LinearKernelSpec",
    "build_linear_kernel",
    "decode_plan",
    "host_cpu_target",
    "kernel_arg_names",
    "kernel_inputs",
    "kernel_inputs_from_tensors",
    "kernel_name",
    "spec_from_node",
]
