"""Which input sizes a compiled graph treats as dynamic, and how calls are checked against them."""

import pytest
import torch
from torch.export import Dim

from bitfold.backends.tvm.signature import InputSpec, SignatureError, infer_input_specs
from bitfold.ir import from_torch
from bitfold.ir.graph_utils import propagate_shapes


class Heads(torch.nn.Module):
    """Reads its sequence length (like attention reshapes do), and a mask of the same length."""

    def forward(self, x, mask):
        b, s, _ = x.shape
        return (x.reshape(b, s, 2, 4) * mask.reshape(b, s, 1, 1)).sum(-1)


def _capture(dynamic):
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5)
    seq = Dim("seq", min=2, max=64)
    shapes = ({1: seq}, {1: seq}) if dynamic else None
    gm = from_torch(Heads(), (x, mask), dynamic_shapes=shapes)
    return gm, (x, mask)


def test_symbolic_sizes_recorded_by_export_are_dynamic():
    gm, _ = _capture(dynamic=True)
    specs = infer_input_specs(gm)
    assert specs[0].shape[0] == 2 and isinstance(specs[0].shape[1], str) and specs[0].shape[2] == 8
    assert specs[1].shape[1] == specs[0].shape[1]  # one shared symbol


def test_sizes_read_by_sym_size_stay_dynamic_after_shapes_are_re_recorded():
    # bitfold's passes re-record meta["val"] with concrete sample inputs (as quantize does).
    gm, inputs = _capture(dynamic=True)
    propagate_shapes(gm, *inputs)
    specs = infer_input_specs(gm)
    assert isinstance(specs[0].shape[1], str) and specs[1].shape[1] == specs[0].shape[1]
    assert specs[0].shape[0] == 2 and specs[0].dtype == "float32"


def test_a_statically_captured_graph_has_static_inputs():
    gm, _ = _capture(dynamic=False)
    assert [s.shape for s in infer_input_specs(gm)] == [(2, 5, 8), (2, 5)]


def test_explicit_dynamic_dims_win_and_unknown_names_are_errors():
    gm, _ = _capture(dynamic=False)
    specs = infer_input_specs(gm, dynamic_dims={"x": {0: "batch"}, "mask": {0: "batch"}})
    assert specs[0].shape == ("batch", 5, 8) and specs[1].shape == ("batch", 5)
    with pytest.raises(SignatureError, match="unknown inputs"):
        infer_input_specs(gm, dynamic_dims={"nope": {0: "b"}})


def test_example_inputs_must_match_the_graph():
    gm, (x, mask) = _capture(dynamic=False)
    with pytest.raises(SignatureError, match="2 inputs, 1 example"):
        infer_input_specs(gm, example_inputs=(x,))


def test_accepts_binds_symbols_and_names_the_problem():
    spec = InputSpec("ids", (1, "seq"), "int64")
    sizes = {}
    assert spec.accepts((1, 7), sizes) is None and sizes == {"seq": 7}
    assert "dynamic size 'seq' = 7" in InputSpec("mask", (1, "seq"), "int64").accepts((1, 8), sizes)
    assert "must be 1" in spec.accepts((2, 7), {})
    assert "needs 2 dimensions" in spec.accepts((7,), {})
