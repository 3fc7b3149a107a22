"""Shared fixtures: tiny models, calibration folders, and OUT_DIRs quantized once per session."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from bitfold.cli.main import main

from .tiny_models import TinyAttention

HERE = Path(__file__).parent
FACTORY = f"{HERE / 'tiny_models.py'}:build"


def run_cli(capsys, *argv):
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _save_arrays(folder: Path, shapes, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, shape in enumerate(shapes):
        np.save(folder / f"x{i}.npy", rng.standard_normal(shape).astype(np.float32))
    return folder


@pytest.fixture(scope="session")
def mlp_data(tmp_path_factory) -> Path:
    """Six inputs of the factory's NormMLP (batch 4..9 x 32): five calibrate, one is held out."""
    return _save_arrays(tmp_path_factory.mktemp("mlp") / "data", [(4 + i, 32) for i in range(6)], seed=0)


@pytest.fixture(scope="session")
def outside_onnx(tmp_path_factory) -> Path:
    """TinyAttention written by torch.onnx.export, with dynamic batch and sequence axes."""
    path = tmp_path_factory.mktemp("onnx") / "tiny_attention.onnx"
    torch.onnx.export(TinyAttention().eval(), (torch.randn(2, 7, 24),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "seq"}}, dynamo=False)
    return path


@pytest.fixture(scope="session")
def onnx_data(tmp_path_factory) -> Path:
    return _save_arrays(tmp_path_factory.mktemp("attn") / "data", [(2, 5 + i, 24) for i in range(5)], seed=1)


def _quantize(tmp_path_factory, recipe: str, data: Path, *extra) -> Path:
    out = tmp_path_factory.mktemp("q") / recipe
    code = main(["quantize", FACTORY, "--recipe", recipe, "--calib", str(data), "-o", str(out), "-q", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def mlp_w8a8(tmp_path_factory, mlp_data) -> Path:
    """NormMLP quantized with w8a8-int through the CLI (with analysis)."""
    return _quantize(tmp_path_factory, "w8a8-int", mlp_data)


@pytest.fixture(scope="session")
def mlp_w4a4(tmp_path_factory, mlp_data) -> Path:
    """NormMLP quantized with w4a4-fp-minmax on the same data, for recipe comparisons."""
    return _quantize(tmp_path_factory, "w4a4-fp-minmax", mlp_data)


@pytest.fixture(scope="session")
def outside_quantized(tmp_path_factory, outside_onnx, onnx_data):
    """The ONNX file from outside bitfold, quantized with w4a4-fp-minmax: (OUT_DIR, printed summary)."""
    out = tmp_path_factory.mktemp("outside") / "q"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["quantize", str(outside_onnx), "--recipe", "w4a4-fp-minmax", "--calib", str(onnx_data),
                     "-o", str(out), "-q"])
    assert code == 0
    return out, printed.getvalue()
