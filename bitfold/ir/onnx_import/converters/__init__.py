"""One module per operator family; importing this package registers every converter."""

from bitfold.ir.onnx_import.converters import (  # noqa: F401
    activations,
    constants,
    conv,
    elementwise,
    indexing,
    linalg,
    normalization,
    pooling,
    reductions,
    shape_ops,
)
