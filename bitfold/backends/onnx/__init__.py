"""ONNX backend: export bitfold's quantized models to ONNX files that stock ONNX Runtime runs.

    import bitfold
    q = bitfold.quantize(model, "w4a4-fp", calibration_data)
    bitfold.export_onnx(q, "model.onnx", example_inputs)                       # every quantize point kept
    bitfold.export_onnx(q, "model_w4.onnx", example_inputs, mode="compressed")  # low-bit weights, MatMulNBits

:func:`export_onnx` is the entry point (:mod:`~bitfold.backends.onnx.export` says how it
works and why); :func:`read_metadata` reads back what a file records; new bitfold ops
register their ONNX form with :func:`register_lowering` or :func:`register_decomposition`;
:func:`ort_session` opens a file in ONNX Runtime. Importing this package also teaches
:func:`bitfold.ir.from_onnx` the ``QuantizeLinear``/``DequantizeLinear`` operators that
simulate-mode files contain (:mod:`~bitfold.backends.onnx.reimport`).
"""

from bitfold.backends.onnx import reimport  # noqa: F401  (registers importer converters)
from bitfold.backends.onnx.errors import OnnxExportError
from bitfold.backends.onnx.export import export_onnx
from bitfold.backends.onnx.lowering import BitfoldNode, LoweringContext
from bitfold.backends.onnx.metadata import read_metadata
from bitfold.backends.onnx.registry import register_decomposition, register_lowering, registered_ops
from bitfold.backends.onnx.runtime import ort_session

__all__ = [
    "BitfoldNode",
    "LoweringContext",
    "OnnxExportError",
    "export_onnx",
    "ort_session",
    "read_metadata",
    "register_decomposition",
    "register_lowering",
    "registered_ops",
]
