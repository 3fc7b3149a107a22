"""The Relax → executable pipeline, with bitfold's default schedules in the middle.

``tvm.compile`` applies no schedule to CPU kernels: every op would run as the naive loop nest
its compute definition spells (a BERT block ~30× slower than PyTorch). bitfold's pipeline is
TVM's own per-target pipeline with one step added after fusion::

    fast math (:mod:`.fast_math`) → LegalizeOps → AnnotateTIROpPattern → FoldConstant → FuseOps → FuseTIR
      → default schedules (llvm: :mod:`.schedule_cpu`; cuda: :mod:`.schedule_gpu`)
      → dataflow lowering and memory planning (TVM's own passes)

Kernels that arrive already scheduled (``tirx.is_scheduled``, e.g. bitfold.codegen's low-bit
GEMMs) are left as they are.
"""

from __future__ import annotations

import tvm
import tvm.relax.backend.cpu_generic.pipeline
import tvm.relax.backend.cuda.pipeline
from tvm import relax

from bitfold.backends.tvm.fast_math import fast_math
from bitfold.backends.tvm.target import is_gpu


def legalize_and_fuse() -> list:
    """Relax ops → TIR PrimFuncs, fused into one kernel per producer/epilogue group."""
    return [
        fast_math,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def default_schedules(target: tvm.target.Target) -> tvm.transform.Pass:
    """The pass that schedules every not-yet-scheduled PrimFunc for ``target``."""
    if is_gpu(target):
        from bitfold.backends.tvm.schedule_gpu import gpu_schedule_pass

        return gpu_schedule_pass()
    from bitfold.backends.tvm.schedule_cpu import cpu_schedule_pass

    return cpu_schedule_pass()


def relax_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """bitfold's Relax pipeline for ``target`` (see the module docstring)."""
    backend = relax.backend.cuda.pipeline if is_gpu(target) else relax.backend.cpu_generic.pipeline

    @tvm.transform.module_pass(opt_level=0, name="BitfoldPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                backend.library_dispatch_passes(target)
                + legalize_and_fuse()
                + [default_schedules(target)]
                + backend.dataflow_lower_passes(target)
                + backend.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def build(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """Compile a Relax module (with ``main``) for ``target``.

    For CUDA, TVM 0.27 stores the generated CUDA C in the library and compiles it when the
    module is first loaded on a GPU (see :mod:`.compiled_model`); :func:`cuda_source` gets it.
    """
    return tvm.compile(mod, target, relax_pipeline=relax_pipeline(target))


def cuda_source(executable: tvm.runtime.Executable) -> str:
    """The CUDA C of every kernel in a module built for a CUDA target."""
    modules = executable.mod._collect_from_import_tree(lambda m: m.kind == "cuda")
    if not modules:
        raise ValueError("the executable holds no CUDA module (was it built for a CUDA target?)")
    return "\n".join(m.inspect_source("") for m in modules)
