"""Read an ONNX model from a path or a ``ModelProto`` and check it is one the importer can walk.

Weights kept in external data files are not read here: initializers are converted one by
one when the graph uses them (:func:`bitfold.ir.onnx_import.dtypes.to_torch` with the
model's directory), so a model larger than protobuf's 2 GiB limit loads too. Model-local
functions are inlined, so converters only ever see standard operators.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError

from bitfold.ir.onnx_import.dtypes import external_location
from bitfold.ir.onnx_import.errors import OnnxImportError

ModelSource = Union[str, "os.PathLike[str]", onnx.ModelProto]


@dataclass
class LoadedModel:
    model: onnx.ModelProto
    base_dir: str  # where external data files are looked up; "" for an in-memory model
    label: str  # how errors name the model: its path, or "<ModelProto>"


def load_model(source: ModelSource) -> LoadedModel:
    """Read and sanity-check ``source``; raises :class:`OnnxImportError` naming the file."""
    if isinstance(source, onnx.ModelProto):
        loaded = LoadedModel(source, "", "<ModelProto>")
    elif isinstance(source, (str, os.PathLike)):
        loaded = _read_file(os.fspath(source))
    else:
        raise OnnxImportError(f"from_onnx expects a path or an onnx.ModelProto, got {type(source).__name__}")
    _check_structure(loaded)
    _check_external_data(loaded)
    if loaded.model.functions:
        loaded.model = onnx.inliner.inline_local_functions(loaded.model)
    return loaded


def _read_file(path: str) -> LoadedModel:
    if not os.path.exists(path):
        raise OnnxImportError(f"ONNX file {path!r} does not exist")
    if os.path.isdir(path):
        raise OnnxImportError(f"ONNX file {path!r} is a directory, not a model file")
    if os.path.getsize(path) == 0:
        raise OnnxImportError(f"ONNX file {path!r} is empty")
    try:
        model = onnx.load_model(path, load_external_data=False)
    except DecodeError as err:
        raise OnnxImportError(
            f"ONNX file {path!r} is not a valid ONNX protobuf ({err}); the file may be truncated, "
            "corrupted, or not an ONNX model"
        ) from err
    except OSError as err:
        raise OnnxImportError(f"ONNX file {path!r} could not be read: {err}") from err
    except Exception as err:  # onnx's format-specific readers raise assorted types
        raise OnnxImportError(f"ONNX file {path!r} could not be parsed: {type(err).__name__}: {err}") from err
    return LoadedModel(model, os.path.dirname(os.path.abspath(path)), repr(path))


def _check_structure(loaded: LoadedModel) -> None:
    model, label = loaded.model, loaded.label
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise OnnxImportError(f"ONNX model {label} has no ir_version or no graph: "
                              "it is not an ONNX model, or is truncated")
    if not model.graph.output:
        raise OnnxImportError(f"ONNX model {label} declares no graph outputs: it is malformed or truncated")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise OnnxImportError(f"ONNX model {label} imports no version of the default ('ai.onnx') operator set")


def _check_external_data(loaded: LoadedModel) -> None:
    for tensor in loaded.model.graph.initializer:
        location = external_location(tensor)
        if location is None:
            continue
        if not loaded.base_dir:
            raise OnnxImportError(
                f"initializer {tensor.name!r} keeps its data in the external file {location!r}, which an in-memory "
                "ModelProto cannot locate: pass the model's path instead, or onnx.load() it with its external data"
            )
        path = os.path.join(loaded.base_dir, location)
        if not os.path.isfile(path):
            raise OnnxImportError(
                f"ONNX model {loaded.label}: external data file {location!r} of initializer {tensor.name!r} "
                f"is missing (looked for {path!r})"
            )
