"""The one error type of the ONNX backend."""


class OnnxExportError(RuntimeError):
    """An export that cannot be done as asked; the message names the node, layer or file."""
