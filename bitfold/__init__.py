"""bitfold: a low-bit quantization compiler for PyTorch and ONNX models.

The public API is small: :func:`quantize` returns a :class:`QuantizedModel` that runs the
quantized graph in PyTorch; see the README for what else works today.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported lazily: `import bitfold.ir.formats` must not pull in the whole pipeline.
    if name in ("quantize", "QuantizedModel"):
        from bitfold import api

        return getattr(api, name)
    if name == "export_onnx":
        from bitfold.backends.onnx import export_onnx

        return export_onnx
    if name == "compile":
        from bitfold.backends.tvm import compile

        return compile
    raise AttributeError(f"module 'bitfold' has no attribute {name!r}")


__all__ = ["QuantizedModel", "compile", "export_onnx", "quantize", "__version__"]
