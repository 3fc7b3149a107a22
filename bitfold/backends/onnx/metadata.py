"""The metadata an exported model carries (``ModelProto.metadata_props``).

======================  ====================================================================
key                     value
======================  ====================================================================
``bitfold.version``     the bitfold version that wrote the file
``bitfold.mode``        ``simulate`` or ``compressed``
``bitfold.recipe``      the recipe, as JSON (``null`` for a graph quantized by hand)
``bitfold.layers``      per quantized op: format, granularity, how it was lowered, stored
                        bytes, and for MatMulNBits the ``accuracy_level``; JSON
``bitfold.accuracy_level``  the MatMulNBits accuracy level, when any layer uses it
``bitfold.opset``       the default-domain opset
======================  ====================================================================

:func:`read_metadata` returns them decoded.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import onnx

PREFIX = "bitfold."


def write_metadata(model: onnx.ModelProto, entries: Dict[str, Any]) -> None:
    """Set ``bitfold.<key>`` entries (values JSON-encoded unless they are strings)."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        model.metadata_props.add(key=PREFIX + key, value=text)


def read_metadata(model: Any) -> Dict[str, Any]:
    """The ``bitfold.*`` entries of a model (a ``ModelProto`` or a path), JSON values decoded."""
    proto: Optional[onnx.ModelProto] = model if isinstance(model, onnx.ModelProto) else \
        onnx.load(str(model), load_external_data=False)
    out: Dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(PREFIX):
            key = prop.key[len(PREFIX):]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out
