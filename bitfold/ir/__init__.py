"""bitfold's intermediate representation.

Number formats (:mod:`bitfold.ir.formats`), the custom ops (:mod:`bitfold.ir.ops`), capture
into the canonical FX form (:func:`from_torch`, :func:`from_onnx`), a networkx view for
analyses (:class:`GraphView`) and a readable summary (:func:`summarize`).
"""

from bitfold.ir import formats, ops
from bitfold.ir.capture import CaptureError, from_torch
from bitfold.ir.graph_view import GraphView
from bitfold.ir.onnx_import import OnnxImportError, from_onnx
from bitfold.ir.summary import summarize

__all__ = ["CaptureError", "GraphView", "OnnxImportError", "formats", "from_onnx", "from_torch", "ops", "summarize"]
