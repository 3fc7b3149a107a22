"""Graph passes over bitfold's canonical FX form, and the machinery that runs them.

* :class:`Pass`, :class:`PassResult`, :class:`PassManager` — the contract and the runner
  (fixed point, optional output verification naming the pass that broke equivalence);
* :class:`RewriteRule`, :class:`RewritePass`, :func:`explain` — pattern / check / rewrite
  rules whose failed checks are recorded on the node;
* the standard passes, one module each: inline scalar constants, fold constants, eliminate
  dead code, remove no-ops, fold BatchNorm, canonicalize norms, fuse bias, fuse activation,
  mark quantizable.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from torch import fx

from bitfold.passes.base import Pass, PassError, PassResult
from bitfold.passes.canonicalize_norms import CanonicalizeNorms
from bitfold.passes.eliminate_dead_code import EliminateDeadCode
from bitfold.passes.fold_batchnorm import FoldBatchNorm
from bitfold.passes.fold_constants import FoldConstants
from bitfold.passes.fuse_activation import FuseActivation
from bitfold.passes.fuse_bias import FuseBias
from bitfold.passes.inline_scalar_constants import InlineScalarConstants
from bitfold.passes.manager import EquivalenceError, PassManager
from bitfold.passes.mark_quantizable import MarkQuantizable
from bitfold.passes.remove_noops import RemoveNoOps
from bitfold.passes.rewrite import Failure, Match, RewritePass, RewriteRule, explain


def standard_passes() -> List[Pass]:
    """The equivalence-preserving clean-up every quantization flow starts with."""
    return [
        InlineScalarConstants(),
        FoldConstants(),
        RemoveNoOps(),
        FoldBatchNorm(),
        CanonicalizeNorms(),
        FuseBias(),
        EliminateDeadCode(),
        MarkQuantizable(),
    ]


def run_standard_passes(
    gm: fx.GraphModule, sample_inputs: Optional[Sequence[Any]] = None, passes: Optional[Sequence[Pass]] = None
) -> PassManager:
    """Run :func:`standard_passes` on ``gm`` in place; with ``sample_inputs``, verify each pass.

    Returns the manager, whose ``history`` says what each pass did.
    """
    manager = PassManager(passes if passes is not None else standard_passes(), sample_inputs=sample_inputs)
    manager.run(gm)
    return manager


__all__ = [
    "CanonicalizeNorms", "EliminateDeadCode", "EquivalenceError", "Failure", "FoldBatchNorm", "FoldConstants",
    "FuseActivation", "FuseBias", "InlineScalarConstants", "MarkQuantizable", "Match", "Pass", "PassError",
    "PassManager", "PassResult", "RemoveNoOps", "RewritePass", "RewriteRule", "explain", "run_standard_passes",
    "standard_passes",
]
