"""ONNX element types as torch dtypes, and ONNX tensors as torch tensors.

One table maps ``TensorProto.DataType`` codes to ``torch.dtype``; types torch cannot hold
(strings, 4-bit and 2-bit integers, FP4) are absent, so a lookup of one is a clear error.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from bitfold.ir.onnx_import.errors import OnnxImportError

_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn,
    TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: torch.float8_e5m2,
    TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
}

# numpy has no native dtype for these; onnx hands them back as ml_dtypes arrays.
_BYTE_COPIED = {torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz}


def maybe_torch_dtype(elem_type: int) -> Optional[torch.dtype]:
    return _TORCH_DTYPES.get(elem_type)


def torch_dtype(elem_type: int, what: str) -> torch.dtype:
    """The torch dtype of ONNX element type ``elem_type``; ``what`` names the value for errors."""
    dtype = _TORCH_DTYPES.get(elem_type)
    if dtype is None:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise OnnxImportError(f"{what}: element type {name} has no torch equivalent")
    return dtype


def to_torch(tensor: onnx.TensorProto, base_dir: str = "") -> torch.Tensor:
    """A torch copy of ``tensor``, reading external data relative to ``base_dir``."""
    dtype = torch_dtype(tensor.data_type, f"tensor {tensor.name!r}")
    try:
        array = numpy_helper.to_array(tensor, base_dir)
    except Exception as err:  # onnx reports unreadable data with assorted exception types
        where = external_location(tensor)
        source = f" (external data {where!r} in {base_dir or os.getcwd()!r})" if where else ""
        raise OnnxImportError(f"tensor {tensor.name!r}{source} could not be read: {err}") from err
    if dtype in _BYTE_COPIED:
        raw = np.ascontiguousarray(array).tobytes()
        return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(array.shape)
    return torch.from_numpy(np.array(array, copy=True))


def external_location(tensor: onnx.TensorProto) -> Optional[str]:
    """The file an external-data tensor points at, or ``None`` for an inline tensor."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    return next((e.value for e in tensor.external_data if e.key == "location"), "?")
