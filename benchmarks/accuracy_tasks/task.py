"""What one model gives the accuracy benchmark: a float module, calibration inputs, an evaluation.

A :class:`Task` is built once per run. ``evaluate(run)`` measures ``run`` (the float module or a
:class:`bitfold.QuantizedModel`, called like the module) on held-out data against the float
model's own outputs or labels, which the task computed once when it was built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Sequence, Tuple

import torch
from torch import nn

Inputs = Tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Metric:
    """One column of the table: ``key`` in the task's result dict, its header and decimals."""

    key: str
    label: str
    digits: int
    higher_is_better: bool = True


@dataclass
class Task:
    """A model with its calibration inputs and its held-out evaluation.

    ``settings`` are the JSON-ready facts a reader needs to reproduce the numbers (data
    sources, sizes, seeds), part of :meth:`fingerprint`; ``run_info`` are facts of this run
    only (a cache hit, a training time), not part of it; ``notes`` are printed under the table.
    """

    name: str
    module: nn.Module
    calibration: List[Inputs]
    evaluate: Callable[[Callable[..., torch.Tensor]], Dict[str, float]]
    metrics: Tuple[Metric, ...]
    settings: Dict[str, Any]
    notes: List[str] = field(default_factory=list)
    run_info: Dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """SHA-256 of the settings, the float weights and the calibration inputs: two tasks
        with the same fingerprint quantize to the same model under the same recipe."""
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for tensors in (tuple(self.module.state_dict().values()), *self.calibration):
            for t in tensors:
                h.update(str((t.dtype, tuple(t.shape))).encode())
                h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def assert_disjoint(what: str, calibration: Iterable[Hashable], evaluation: Iterable[Hashable]) -> None:
    """Raise if a calibration item (an index, a text, a token range) is also evaluated on."""
    shared = set(calibration) & set(evaluation)
    if shared:
        example = next(iter(shared))
        raise AssertionError(f"{what}: {len(shared)} item(s) are in both calibration and evaluation, "
                             f"e.g. {str(example)[:80]!r}")


def batches(items: Sequence[Any], size: int) -> List[Sequence[Any]]:
    """``items`` in consecutive chunks of ``size`` (the last one may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]
