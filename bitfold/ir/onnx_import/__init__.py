"""ONNX → canonical FX import.

:func:`from_onnx` reads an ONNX model (a path or an ``onnx.ModelProto``) and returns the form
``torch.export.export(model, args).module()`` gives for a PyTorch model, so every bitfold
pass works on it unchanged:

* ATen operator overloads (``aten.linear.default``, ``aten.conv2d.default``…), plus
  ``operator.*`` on sizes and ``operator.getitem`` for multi-output ops; trailing arguments
  equal to their defaults are dropped, as export does.
* Graph inputs (those without an initializer) are placeholders named after the ONNX inputs,
  made identifiers; the module is called with them positionally, in ONNX order.
* Constants are ``get_attr`` nodes of attributes registered flat on the module, named
  after the ONNX value with non-identifier characters replaced by ``_``
  (``encoder.layer.0.attention.self.query.weight`` → ``encoder_layer_0_attention_self_query_weight``);
  ``gm.meta["onnx_initializers"]`` maps them back. Float initializers are
  ``nn.Parameter(requires_grad=False)``, everything else buffers. One-element constants
  in elementwise ops become Python scalars (``aten.mul.Tensor(x, 0.5)``), as export writes.
* The result is always a tuple in ONNX output order, a 1-tuple for one output.
* Dynamic sizes are ``aten.sym_size.int`` of the inputs combined with ``operator`` calls;
  shape computations on them are evaluated at import time, static ones folded to ints.
* ``node.meta["val"]`` holds a fake tensor with symbolic sizes, ``node.meta["onnx_node"]``
  the ONNX node a call came from.

The import is literal: MatMul + Add stays ``matmul`` + ``add``, a decomposed LayerNorm stays
decomposed (canonicalizing passes handle both sources). The one exception is Gather from a
2-D float initializer along axis 0, which is ``aten.embedding`` as ``nn.Embedding`` exports.
Failures raise :class:`OnnxImportError` naming the file or node; :func:`supported_ops` lists
the operators and schema versions covered.
"""

from bitfold.ir.onnx_import.errors import OnnxImportError
from bitfold.ir.onnx_import.importer import from_onnx
from bitfold.ir.onnx_import.registry import supported_ops

__all__ = ["OnnxImportError", "from_onnx", "supported_ops"]
