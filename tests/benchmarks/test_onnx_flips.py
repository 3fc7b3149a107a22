"""benchmarks/onnx_flips.py on a tiny quantized MLP: quantize points pair up in order and agree."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

import bitfold
from bitfold.backends.onnx import export_onnx

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str, path: Path):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flips = _load("bitfold_benchmark_onnx_flips", BENCHMARKS / "onnx_flips.py")


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))


def test_quantizers_pair_up_and_the_first_sees_the_same_input(tmp_path):
    data = [torch.randn(4, 16) for _ in range(4)]
    for recipe in ("w4a4-int", "w4a4-fp-minmax"):  # Q/DQ pairs; ExMy functions
        q = bitfold.quantize(Mlp().eval(), recipe, data, progress=False)
        path = export_onnx(q, tmp_path / f"{recipe}.onnx", data[:1])
        ours = flips.torch_quantizers(q, (data[0],))
        theirs = flips.onnx_quantizers(path, (data[0],))
        assert len(ours) == len(theirs) == 2
        (_, fmt, x, y), (ox, oy) = ours[0], theirs[0]
        assert np.array_equal(ox, x) and np.array_equal(oy, y), recipe
        second_in, ort_second_in = ours[1][2], theirs[1][0]  # after a linear: float rounding only
        assert np.abs(ort_second_in - second_in).max() <= 1e-5 * np.abs(second_in).max()
