"""Turn a user's target (``"llvm"``, ``"llvm -mcpu=native"``, ``"cuda -arch=sm_90"``) into a TVM target.

TVM 0.27 rejects the command-line string form (``"llvm -mcpu=..."``) that users and older
docs write; it wants a dict such as ``{"kind": "llvm", "mcpu": "znver1"}``. This module
accepts both spellings (and a ready :class:`tvm.target.Target`), so ``bitfold.compile`` takes
what people type. ``-mcpu=native`` is resolved to the host CPU's name, so that the built code
and its cache key say which CPU it was built for.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, Dict, Union

import tvm
from tvm.target import Target

TargetLike = Union[str, Dict[str, Any], Target]

#: Options whose value is a comma-separated list in the string form.
_LIST_OPTIONS = {"keys", "libs", "mattr", "cl-opt"}


class TargetError(ValueError):
    """The target cannot be understood or is not supported by bitfold's TVM backend."""


def _option_value(key: str, raw: str) -> Any:
    if key in _LIST_OPTIONS:
        return [item for item in raw.split(",") if item]
    if raw.lstrip("-").isdigit():
        return int(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


def target_dict(target: str) -> Dict[str, Any]:
    """The TVM 0.27 dict form of a command-line target string.

    ``"llvm -mcpu=native -num-cores=2"`` → ``{"kind": "llvm", "mcpu": <host cpu>, "num-cores": 2}``.
    A bare ``-flag`` means ``True``.
    """
    words = shlex.split(target)
    if not words or words[0].startswith("-"):
        raise TargetError(f"target {target!r} must start with a kind such as 'llvm' or 'cuda'")
    spec: Dict[str, Any] = {"kind": words[0]}
    for word in words[1:]:
        if not word.startswith("-"):
            raise TargetError(f"target {target!r}: option {word!r} must look like -key=value")
        key, sep, raw = word.lstrip("-").partition("=")
        spec[key] = _option_value(key, raw) if sep else True
    if spec.get("mcpu") == "native":
        spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    return spec


def resolve_target(target: TargetLike) -> Target:
    """A :class:`tvm.target.Target` for ``target``: a command-line string, a JSON or Python dict,
    or a ``Target``.

    Only ``llvm`` (CPU) and ``cuda`` are supported: those are the targets bitfold has default
    schedules for.
    """
    if isinstance(target, Target):
        resolved = target
    else:
        if isinstance(target, str) and target.lstrip().startswith("{"):
            spec = json.loads(target)
        else:
            spec = target_dict(target) if isinstance(target, str) else dict(target)
        try:
            resolved = Target(spec)
        except Exception as err:  # TVM raises its own error types for bad options
            raise TargetError(f"TVM rejected target {target!r}: {str(err).splitlines()[0]}") from err
    if resolved.kind.name not in ("llvm", "cuda"):
        raise TargetError(f"target kind {resolved.kind.name!r} is not supported; use 'llvm' or 'cuda'")
    return resolved


def is_gpu(target: Target) -> bool:
    """Whether ``target`` runs on a GPU (and therefore needs thread-bound schedules)."""
    return target.kind.name == "cuda"


def device_for(target: Target) -> "tvm.runtime.Device":
    """The runtime device a module built for ``target`` runs on."""
    return tvm.cuda(0) if is_gpu(target) else tvm.cpu(0)
