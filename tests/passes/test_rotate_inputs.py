import pytest
import torch

from bitfold.passes import PassManager, explain
from bitfold.passes.rotate_inputs import ROTATION_KEY, RotateInputs, activation_fed

from ._helpers import assert_same_outputs, capture, count

F = torch.nn.functional
HADAMARD, LINEAR = torch.ops.bitfold.hadamard.default, torch.ops.aten.linear.default


class Block(torch.nn.Module):
    """A LayerNorm feeding two linears (Q/K-like), a GELU MLP, a SwiGLU MLP and an odd-width layer."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(48)
        self.q, self.k = torch.nn.Linear(48, 48), torch.nn.Linear(48, 48)
        self.up, self.down = torch.nn.Linear(48, 192), torch.nn.Linear(192, 48)
        self.gate, self.up2, self.down2 = torch.nn.Linear(48, 96), torch.nn.Linear(48, 96), torch.nn.Linear(96, 48)
        self.odd_in, self.odd = torch.nn.Linear(48, 7), torch.nn.Linear(7, 48)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.q(h) * self.k(h)
        x = x + self.down(F.gelu(self.up(x)))
        x = x + self.down2(F.silu(self.gate(x)) * self.up2(x))
        return x + self.odd(torch.relu(self.odd_in(x)))


def linears(gm):
    return {str(n.args[1].target).split(".")[0]: n for n in gm.graph.nodes if n.target is LINEAR}


def test_activation_fed_finds_gelu_and_swiglu_inputs():
    gm = capture(Block().eval(), torch.randn(2, 5, 48))
    fed = {name for name, node in linears(gm).items() if activation_fed(node)}
    assert fed == {"down", "down2", "odd"}


def test_rotation_is_exact_shared_by_an_input_and_counter_rotates_the_weight():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 5, 48)
    gm = capture(model, x)
    layers = linears(gm)
    names = [layers[k].name for k in ("q", "k", "down", "down2")]
    result = PassManager([RotateInputs(names, max_block=64)], sample_inputs=(x,)).run(gm)
    assert result.modified
    layers = linears(gm)
    assert count(gm, HADAMARD) == 3  # q and k read one LayerNorm output: one rotation
    assert layers["q"].args[0] is layers["k"].args[0]
    assert {k: layers[k].meta.get(ROTATION_KEY) for k in layers} == {
        "q": 16, "k": 16, "down": 64, "down2": 32, "up": None, "gate": None, "up2": None, "odd_in": None, "odd": None}
    assert [n.args[1] for n in gm.graph.nodes if n.target is HADAMARD] == [16, 64, 32]
    assert str(layers["down"].args[1].target) == "down.weight_rotated"
    assert not hasattr(gm.down, "weight")  # the unrotated weight is gone
    assert_same_outputs(gm, model, torch.randn(3, 4, 48), rtol=1e-5)


def test_a_layer_no_block_divides_is_left_alone_with_the_reason():
    model = Block().eval()
    x = torch.randn(2, 5, 48)
    gm = capture(model, x)
    odd = linears(gm)["odd"]
    result = PassManager([RotateInputs([odd.name])], sample_inputs=(x,)).run(gm)
    assert not result.modified and count(gm, HADAMARD) == 0
    assert explain(gm, odd.name) == [
        "RotateLinearInput: its 7 input channels are odd: no power-of-two block divides them"]


@pytest.mark.parametrize("block", [0, 1, 48])
def test_max_block_must_be_a_power_of_two(block):
    with pytest.raises(ValueError, match="max_block must be a power of two"):
        RotateInputs([], max_block=block)
