"""bitfold's TVM backend: canonical FX graph → Relax → scheduled kernels → shared library.

    import bitfold
    compiled = bitfold.compile(quantized_model, target="llvm -mcpu=native")
    logits = compiled(input_ids, attention_mask)        # numpy or torch in, same kind out
    compiled.export("model_dir")                          # model.so + params.bin + model.json

Modules: :mod:`.target` (target strings → TVM 0.27 dicts), :mod:`.signature` (input shapes,
dynamic sizes), :mod:`.importer` (FX → Relax driver) with the lowerings
:mod:`.lower_aten`, :mod:`.lower_dense`, :mod:`.lower_fake_quantize`,
:mod:`.lower_bitfold_ops`; :mod:`.build` (pipeline) with the default schedules
:mod:`.schedule_cpu` / :mod:`.schedule_gpu`; :mod:`.compiled_model` (run, export, load).
"""

from bitfold.backends.tvm.compile_model import compile
from bitfold.backends.tvm.compiled_model import CompiledModel
from bitfold.backends.tvm.importer import LoweringError
from bitfold.backends.tvm.signature import InputSpec, SignatureError
from bitfold.backends.tvm.target import TargetError, resolve_target

__all__ = ["CompiledModel", "InputSpec", "LoweringError", "SignatureError", "TargetError", "compile",
           "resolve_target"]
