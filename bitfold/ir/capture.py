"""Capture a PyTorch model into bitfold's canonical FX form.

The canonical form is what ``torch.export.export(model, args).module()`` returns: a
``GraphModule`` of ATen-level ops (``aten.linear``, ``aten.conv2d``, ``aten.layer_norm``…)
whose parameters are ``get_attr`` nodes, as PT2E uses. Every pass is written against it.
Export's run-time checks — the ``_guards_fn`` submodule, the input-shape pre-hook and
``aten._assert_tensor_metadata`` nodes — are dropped: bitfold rewrites the graph after capture, and those checks describe the
pre-rewrite values (an assert on a dtype would also hold an extra use of the value it checks,
hiding patterns from the rewriter).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import fx


class CaptureError(RuntimeError):
    """``torch.export`` could not trace a model; the message says what failed and what to try."""


_ADVICE = (
    ("data-dependent", "control flow or a shape depends on tensor values; replace it with torch.where / "
     "torch.cond, or make the value a constant"),
    ("Dynamic control flow", "Python branching on tensor values; use torch.cond or compute both branches"),
    ("Constraints violated", "a dimension marked dynamic is specialized by the model; drop it from "
     "dynamic_shapes or give it the range the model accepts"),
    ("Unsupported", "an operation torch.export cannot trace in strict mode; try strict=False"),
    ("not supported", "an operation torch.export cannot trace; try strict=False or wrap the call"),
)


def _advice_for(message: str) -> str:
    for needle, advice in _ADVICE:
        if needle.lower() in message.lower():
            return advice
    return "try strict=False, or wrap the model so forward() takes and returns tensors only"


def _user_frame(message: str) -> Optional[str]:
    """The first ``File "...", line N`` of the model's own code in a torch.export message."""
    for line in message.splitlines():
        match = re.search(r'File "([^"]+)", line (\d+)', line)
        if match and "/torch/" not in match.group(1) and "/bitfold/" not in match.group(1):
            return f"{match.group(1)}:{match.group(2)}"
    return None


def _drop_guards(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        guard = node.op == "call_module" and node.target == "_guards_fn"
        metadata_assert = node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default
        if (guard or metadata_assert) and not node.users:
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    for key, hook in list(gm._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del gm._forward_pre_hooks[key]
    gm.recompile()


def from_torch(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    dynamic_shapes: Optional[Any] = None,
    example_kwargs: Optional[Dict[str, Any]] = None,
    strict: bool = False,
) -> fx.GraphModule:
    """Trace ``model`` (in eval mode) into a canonical ``GraphModule``.

    ``dynamic_shapes`` follows ``torch.export.export`` (e.g. ``({0: Dim("batch")},)``).
    ``strict=False`` (the default) traces through Python the way PT2E does and accepts more
    models; ``strict=True`` uses TorchDynamo. Raises :class:`CaptureError` naming the
    construct that failed.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"from_torch expects a torch.nn.Module, got {type(model).__name__}")
    args: Tuple[Any, ...] = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    was_training = model.training
    model.eval()
    try:
        # Under no_grad, code such as a @torch.no_grad rotary embedding traces to plain ATen
        # ops instead of a set_grad_enabled region with a nested submodule.
        with torch.no_grad():
            exported = torch.export.export(
                model, args, kwargs=example_kwargs, dynamic_shapes=dynamic_shapes, strict=strict
            )
    except Exception as err:  # torch.export raises many unrelated types
        message = str(err).strip()
        first_line = message.splitlines()[0] if message else type(err).__name__
        where = _user_frame(message)
        raise CaptureError(
            f"torch.export could not trace {type(model).__name__}: {type(err).__name__}: {first_line}\n"
            + (f"  at: {where}\n" if where else "")
            + f"  what to try: {_advice_for(message)}"
        ) from err
    finally:
        model.train(was_training)
    gm = exported.module()
    _drop_guards(gm)
    gm.meta["bitfold_source"] = "torch"
    return gm
