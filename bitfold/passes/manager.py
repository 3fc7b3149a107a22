"""Run passes to a fixed point, optionally proving each one kept the model's outputs.

With ``sample_inputs``, the manager also records shapes on every node (fake-tensor
propagation) before the first pass and after every pass that changed the graph, since
pattern checks read them. It runs the graph once before any pass to get reference
outputs, and after every pass that changed the graph and claims to preserve semantics it
runs the graph again and compares: the largest ``|new - ref| / max|ref|`` over all outputs
must stay within the pass's ``tolerance``. The first pass that breaks this is named in an
:class:`EquivalenceError` — the pass, the iteration, the output, and the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch
from torch import fx

from bitfold.ir.graph_utils import propagate_shapes
from bitfold.passes.base import Pass, PassError, PassResult


class EquivalenceError(PassError):
    """A pass that claims to preserve semantics changed the graph's outputs."""


@dataclass
class PassRecord:
    """One pass application: which pass, in which iteration, whether it changed anything."""

    name: str
    iteration: int
    modified: bool
    max_relative_error: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def _flatten(out: Any) -> List[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def relative_error(new: Any, ref: Any) -> List[float]:
    """Per output: ``max|new - ref| / max|ref|`` (absolute error where ``ref`` is all zero)."""
    errors = []
    for a, b in zip(_flatten(new), _flatten(ref)):
        if a.shape != b.shape:
            errors.append(float("inf"))
            continue
        if not a.is_floating_point():
            errors.append(0.0 if torch.equal(a, b) else float("inf"))
            continue
        diff = (a.double() - b.double()).abs().max()
        denom = b.double().abs().max()
        errors.append(float(diff / denom) if denom > 0 else float(diff))
    return errors


class PassManager:
    """Runs ``passes`` in order, repeatedly, until none of them modifies the graph."""

    def __init__(
        self,
        passes: Sequence[Pass],
        max_iterations: int = 10,
        sample_inputs: Optional[Sequence[Any]] = None,
    ) -> None:
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.sample_inputs = None if sample_inputs is None else tuple(sample_inputs)
        self.history: List[PassRecord] = []

    def _outputs(self, gm: fx.GraphModule) -> Any:
        with torch.no_grad():
            return gm(*self.sample_inputs)

    def _propagate(self, gm: fx.GraphModule) -> None:
        if self.sample_inputs is not None:
            propagate_shapes(gm, *self.sample_inputs)

    def run(self, gm: fx.GraphModule) -> PassResult:
        """Apply the passes to ``gm`` (in place) until a fixed point; verify if asked."""
        reference = None if self.sample_inputs is None else self._outputs(gm)
        self._propagate(gm)
        any_change = False
        for iteration in range(1, self.max_iterations + 1):
            changed = False
            for p in self.passes:
                try:
                    result = p.run(gm)
                except PassError:
                    raise
                except Exception as err:
                    raise PassError(f"pass {p.name} failed in iteration {iteration}: {err}") from err
                gm = result.graph_module
                if result.modified:
                    self._propagate(gm)
                record = PassRecord(p.name, iteration, result.modified, notes=list(result.notes))
                if result.modified and reference is not None and p.preserves_semantics:
                    errors = relative_error(self._outputs(gm), reference)
                    record.max_relative_error = max(errors, default=0.0)
                    if record.max_relative_error > p.tolerance:
                        worst = max(range(len(errors)), key=errors.__getitem__)
                        self.history.append(record)
                        raise EquivalenceError(
                            f"pass {p.name} changed the model's outputs (iteration {iteration}): output "
                            f"{worst} has relative error {errors[worst]:.3g} > tolerance {p.tolerance:g}"
                        )
                self.history.append(record)
                changed |= result.modified
            any_change |= changed
            if not changed:
                return PassResult(gm, any_change)
        raise PassError(f"passes did not reach a fixed point in {self.max_iterations} iterations")
