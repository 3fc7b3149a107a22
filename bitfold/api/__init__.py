"""The public API: :func:`quantize` (and, as later stages land, export and compile)."""

from bitfold.api.quantize import quantize
from bitfold.api.quantized_model import QuantizedModel

__all__ = ["QuantizedModel", "quantize"]
