"""Check an ONNX model and write it so that a failure leaves no file behind.

The model goes to a temporary file next to the destination, is read back and checked
there with ``onnx.checker`` (full check: types, shapes, functions), and only then renamed
over the destination — an atomic replace on POSIX. Any error removes the temporary file
and leaves a previous file at the destination untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from bitfold.backends.onnx.errors import OnnxExportError

_PROTOBUF_LIMIT = 2**31 - 1


def check(model: onnx.ModelProto, label: str) -> None:
    """``onnx.checker.check_model(full_check=True)``, reported as an :class:`OnnxExportError`."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise OnnxExportError(f"{label}: the exported model fails onnx.checker: {err}") from err


def save_atomically(model: onnx.ModelProto, path: Path) -> int:
    """Write ``model`` to ``path`` (temp file + rename); returns the file size in bytes."""
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise OnnxExportError(f"{path}: the model is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for "
                              "one file; export in compressed mode")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path.stat().st_size
