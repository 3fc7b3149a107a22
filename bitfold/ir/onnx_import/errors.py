"""The one exception the ONNX importer raises, and how it names the node at fault.

Every failure — an unreadable file, an operator or attribute value the importer does not
handle, a malformed graph — surfaces as :class:`OnnxImportError` with a message that names
the file or the node, so a user can tell what to change without reading a stack trace.
"""

from __future__ import annotations

import onnx


class OnnxImportError(ValueError):
    """An ONNX model could not be imported; the message names the file or node and the reason."""


def node_label(node: onnx.NodeProto, index: int) -> str:
    """``'name' (OpType)`` for a named node, ``#index (OpType)`` for an unnamed one."""
    where = repr(node.name) if node.name else f"#{index}"
    return f"node {where} ({node.op_type})"
