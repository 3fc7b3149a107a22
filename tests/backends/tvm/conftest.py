"""Shared, expensive fixtures: real models from bitfold.zoo, captured/quantized once per session.

Unit-level tests use tiny modules; these fixtures exist for the end-to-end checks, and keep
the models small where the check does not need the whole network (truncated to a few
layers, a handful of calibration sentences).
"""

import os

import pytest
import torch

from bitfold import zoo
from bitfold.ir import from_torch
from bitfold.passes import run_standard_passes

# One descheduled spinning worker stalls TVM's statically partitioned parallel loops on a
# busy machine; the tests only need correct results, so never spin.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def capture_dynamic(lm, batch: int = 2, seq: int = 12) -> torch.fx.GraphModule:
    """The zoo model in canonical form with dynamic batch and sequence sizes."""
    from torch.export import Dim

    dims = {}
    shapes = tuple({axis: dims.setdefault(name, Dim(name, min=max(lo, 1), max=hi)) for axis, (name, lo, hi) in axes.items()}
                   for axes in lm.dynamic_axes)
    inputs = lm.example_inputs(batch=batch, seq=seq)
    gm = from_torch(lm.module, inputs, dynamic_shapes=shapes)
    run_standard_passes(gm)
    return gm


def truncated(name: str, layers: int):
    """A zoo language model keeping only its first ``layers`` transformer blocks."""
    lm = zoo.load_model(name)
    if name == "minilm":
        lm.module.encoder.encoder.layer = lm.module.encoder.encoder.layer[:layers]
    else:
        lm.module.lm.model.layers = lm.module.lm.model.layers[:layers]
    return lm


@pytest.fixture(scope="session")
def sentences():
    """Rotten Tomatoes snippets: a few for calibration, others for evaluation."""
    calib, evals = zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=4, seed=0, n_eval=12)
    return list(calib.items), list(evals.items)


@pytest.fixture(scope="session")
def minilm():
    return zoo.load_model("minilm")


@pytest.fixture(scope="session")
def minilm_graph(minilm):
    """All of MiniLM (6 layers) in canonical form, dynamic batch and sequence; shared by the CPU
    and CUDA builds. (A 2-layer MiniLM builds no faster: its 6 layers share one set of kernels,
    and nvcc's time goes to those.)"""
    return capture_dynamic(minilm)


@pytest.fixture(scope="session")
def minilm_w4a4(sentences):
    """A 2-layer MiniLM quantized with w4a4-int (INT4 weights, INT4 activations)."""
    import bitfold

    lm = truncated("minilm", 2)
    calibration = [lm.preprocess(sentences[0][i:i + 2]) for i in (0, 2)]
    return lm, bitfold.quantize(lm.module, "w4a4-int", calibration, progress=False)
