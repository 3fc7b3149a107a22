"""``bitfold::quantized_embedding`` in ONNX: both modes reproduce the PyTorch op exactly."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch

import bitfold
from bitfold.backends.onnx import export_onnx, ort_session, read_metadata
from bitfold.recipes import load_recipe


class Lookup(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.table = torch.nn.Embedding(300, dim)
        self.out = torch.nn.Linear(dim, 8)

    def forward(self, ids):
        return self.out(self.table(ids))


@pytest.mark.parametrize("recipe,dim", [
    ("w4a16-int-g128", 200),  # uint4 + zero point, 2 groups (one partial)
    ("w4a16-int", 37),        # odd width: a padded nibble
    ("w3a16-int", 64),        # 3-bit codes, 2 per byte
    ("w8a8-int", 24),         # one code per byte
    ("w4a16-fp-g32", 96),     # an LLM-FP format per group
])
def test_both_modes_match_the_simulation(tmp_path, recipe, dim):
    torch.manual_seed(0)
    model = Lookup(dim).eval()
    r = dataclasses.replace(load_recipe(recipe), layers=["embedding"])
    ids = [torch.randint(0, 300, (2, 9)) for _ in range(2)]
    q = bitfold.quantize(model, r, ids, progress=False)
    test_ids = torch.randint(0, 300, (3, 11))
    want = q(test_ids).detach().numpy()
    sizes = {}
    for mode in ("simulate", "compressed"):
        path = export_onnx(q, tmp_path / f"{mode}.onnx", ids[:1], mode=mode)
        got = ort_session(path).run(None, {"ids": test_ids.numpy()})[0]
        assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max(), mode
        sizes[mode] = read_metadata(path)["layers"]
    layer = next(iter(sizes["compressed"].values()))
    assert layer["op"] == "quantized_embedding" and "Gather rows" in layer["lowering"]
    assert layer["stored_bytes"] < 0.3 * 300 * dim * 4


def test_compressed_embedding_gathers_before_decoding(tmp_path):
    torch.manual_seed(0)
    q = bitfold.quantize(Lookup(64).eval(), dataclasses.replace(load_recipe("w4a16-int"), layers=["embedding"]),
                         [torch.randint(0, 300, (1, 5))], progress=False)
    proto = onnx.load(export_onnx(q, tmp_path / "c.onnx", (torch.randint(0, 300, (1, 5)),), mode="compressed"))
    first = next(n for n in proto.graph.node if n.op_type == "Gather")
    codes = next(t for t in proto.graph.initializer if t.name == first.input[0])
    assert list(codes.dims) == [300, 32]  # rows of packed nibble pairs, indexed by the token ids
