"""Default CUDA schedules: every kernel gets its loops bound to blocks and threads.

A GPU kernel without thread bindings does not compile at all, so on CUDA the question is not
speed but coverage. TVM's ``dlight`` GPU rules cover the kinds of kernels bitfold emits for
the dense parts of a graph — matmuls (``Matmul``), matrix-vector products at decode time
(``GEMV``), row reductions (``Reduction``, ``GeneralReduction``: softmax, norms) — and
``Fallback`` binds any remaining spatial loop nest (elementwise, fake-quantize, layout ops)
to blocks × threads. Kernels from :mod:`bitfold.codegen` arrive scheduled and are skipped.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight as dl


def gpu_schedule_pass() -> tvm.transform.Pass:
    """Bind every unscheduled PrimFunc to GPU blocks/threads (dlight rules, in order)."""
    return dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    )
