"""The float reference a report compares against: the model as :func:`bitfold.quantize` saw it.

:func:`bitfold.quantize` captures the model, runs the standard passes and only then
quantizes, so its layer names are those of that canonical float graph. Capturing the same
model with the same calibration items the same way gives the same graph and names, which
:func:`bitfold.api.report.layers.match_layers` then checks weight by weight.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import fx

from bitfold.api.quantize import ModelLike, _as_inputs, _capture_dynamic
from bitfold.ir import from_onnx
from bitfold.passes import run_standard_passes


def float_reference(
    model: ModelLike,
    calibration_data: Iterable[Any],
    calibration_samples: int,
    example_inputs: Optional[Sequence[Any]] = None,
) -> fx.GraphModule:
    """The canonical float graph of ``model``, given what ``quantize`` was given: the same
    calibration data, of which the recipe's ``calibration_samples`` items were used."""
    data = [_as_inputs(item) for item in itertools.islice(iter(calibration_data), calibration_samples)]
    if not data:
        raise ValueError("calibration data is empty: give at least one model input")
    example = tuple(example_inputs) if example_inputs is not None else data[0]
    gm = _capture_dynamic(model, example, data) if isinstance(model, torch.nn.Module) else from_onnx(model)
    run_standard_passes(gm, sample_inputs=example)
    return gm
