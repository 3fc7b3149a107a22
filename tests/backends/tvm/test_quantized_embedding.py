"""``bitfold::quantized_embedding`` compiled by TVM: rows decoded from the packed table, bit-exact."""

import dataclasses

import pytest
import torch

import bitfold
from bitfold.backends.tvm import compile
from bitfold.recipes import load_recipe

pytestmark = pytest.mark.slow


class Lookup(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.table = torch.nn.Embedding(300, dim)

    def forward(self, ids):
        return self.table(ids) * 2.0


@pytest.mark.parametrize("recipe,dim", [("w4a16-int-g128", 200), ("w4a16-int", 37), ("w8a8-int", 24),
                                        ("w4a16-fp-g32", 96)])
def test_compiled_lookup_matches_the_simulation(recipe, dim):
    torch.manual_seed(0)
    r = dataclasses.replace(load_recipe(recipe), layers=["embedding"])
    ids = [torch.randint(0, 300, (2, 9)), torch.randint(0, 300, (2, 5))]
    q = bitfold.quantize(Lookup(dim).eval(), r, ids, progress=False)
    cm = compile(q, "llvm")
    for test_ids in (torch.randint(0, 300, (2, 9)), torch.arange(291, 300).repeat(2, 1)):
        assert torch.equal(cm(test_ids), q(test_ids).detach())
