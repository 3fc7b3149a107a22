"""`bitfold export` and `bitfold compile` on the ONNX model from outside bitfold, checked against
the PyTorch simulation (the ONNX file also on inputs of another shape than the saved example)."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bitfold.api import QuantizedModel

from .conftest import run_cli


def _reported_difference(out: str) -> float:
    return float(re.search(r"max relative difference from the PyTorch simulation.*: ([0-9.e+-]+)", out).group(1))


@pytest.mark.slow
def test_export_compressed_onnx_runs_in_onnx_runtime(capsys, tmp_path, outside_quantized):
    directory, _ = outside_quantized
    path = tmp_path / "q.onnx"
    code, out, err = run_cli(capsys, "export", directory, "--onnx", path, "--mode", "compressed")
    assert code == 0, err
    assert _reported_difference(out) < 1e-4
    from bitfold.backends.onnx import ort_session

    x = torch.randn(4, 9, 24)
    got = ort_session(path).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = QuantizedModel.load(directory)(x)
    want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    code, _, err = run_cli(capsys, "export", directory, "--onnx", path)
    assert code == 1 and "exists; pass --overwrite" in err and err.count("\n") == 1


@pytest.mark.slow
def test_compile_for_llvm(capsys, tmp_path, outside_quantized):
    directory, _ = outside_quantized
    target = tmp_path / "q-llvm"
    code, out, err = run_cli(capsys, "compile", directory, "--target", "llvm", "-o", target)
    assert code == 0, err
    # The command ran the compiled module on the saved example and compared it with the simulation.
    assert _reported_difference(out) < 1e-4
    assert {p.name for p in target.iterdir()} >= {"model.so", "params.bin", "model.json"}


def test_backend_errors_are_one_line(capsys, tmp_path, outside_quantized):
    directory, _ = outside_quantized
    code, _, err = run_cli(capsys, "compile", directory, "--target", "vulkan-of-doom", "-o", tmp_path / "c")
    assert code == 1 and err.count("\n") == 1 and "vulkan-of-doom" in err
    code, _, err = run_cli(capsys, "compile", tmp_path, "--target", "llvm", "-o", tmp_path / "c")
    assert code == 1 and "not a quantized model" in err
    code, _, err = run_cli(capsys, "export", tmp_path / "missing", "--onnx", tmp_path / "m.onnx")
    assert code == 1 and "no such directory" in err


def test_compile_for_a_gpu_this_machine_lacks_is_written_but_not_run(capsys, tmp_path, monkeypatch,
                                                                      outside_quantized):
    """A CUDA build on a machine without a GPU: exported, and the check says it was not run."""
    import bitfold.backends.tvm as tvm_backend

    exported = []
    # Not callable: running it would fail the command.
    build = SimpleNamespace(device=SimpleNamespace(exist=False),
                            target=SimpleNamespace(kind=SimpleNamespace(name="cuda")),
                            export=lambda path, overwrite=False: exported.append(path))
    monkeypatch.setattr(tvm_backend, "compile", lambda *args, **kwargs: build)
    directory, _ = outside_quantized
    code, out, err = run_cli(capsys, "compile", directory, "--target", "cuda", "-o", tmp_path / "c")
    assert code == 0, err
    assert exported == [tmp_path / "c"] and "not checked: this machine has no cuda device" in out
