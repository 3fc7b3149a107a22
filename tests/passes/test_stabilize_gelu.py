import torch

from bitfold.passes import PassManager, explain
from bitfold.passes.stabilize_gelu import StabilizeGelu

from ._helpers import assert_same_outputs, capture, count

F = torch.nn.functional
GELU, STABLE = torch.ops.aten.gelu.default, torch.ops.bitfold.gelu.default


class GeluSites(torch.nn.Module):
    """Four GELUs: quantized after a constant pre-shift, quantized after a view (tanh form),
    scaled by a computed tensor before quantizing, and left float."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", 2.0 ** torch.arange(8.0))
        self.register_buffer("scale", torch.tensor(0.25))

    def forward(self, x):
        fq = torch.ops.bitfold.fake_quantize
        shifted = fq(F.gelu(x) * self.shift, "e2m1", self.scale)
        viewed = fq(F.gelu(x - 1, approximate="tanh").reshape(-1, 4, 2), "e4m3", self.scale).reshape(-1, 8)
        gated = fq(F.gelu(x + 1) * torch.sigmoid(x), "e2m1", self.scale)
        return shifted + viewed + gated + F.gelu(2 * x)


def test_rewrites_quantized_gelus_only_and_says_why_not_the_others():
    x = torch.randn(3, 8) * 3
    model = GeluSites().eval()
    gm = capture(model, x)
    assert count(gm, GELU) == 4
    gelus = [n.name for n in gm.graph.nodes if n.target is GELU]
    result = PassManager([StabilizeGelu()], sample_inputs=(x,)).run(gm)
    assert result.modified
    assert count(gm, STABLE) == 2 and count(gm, GELU) == 2
    approximations = sorted(n.args[1] for n in gm.graph.nodes if n.target is STABLE)
    assert approximations == ["none", "tanh"]
    for name in gelus[2:]:
        assert explain(gm, name) == ["GeluToStableGelu: its output is not quantized, so ATen's GELU stays"]
    assert_same_outputs(gm, model, torch.randn(5, 8) * 0.5, rtol=1e-5)


def test_tail_values_get_the_exact_codes():
    """Where ATen's GELU and the exact GELU round tail values to different E2M1 codes after
    a pre-shift, the rewritten graph gives the exact GELU's codes."""
    x = torch.linspace(-6.0, -2.0, 65536).reshape(-1, 8)
    model = GeluSites().eval()
    model.shift = 2.0 ** torch.arange(3.0, 11.0)
    gm = capture(model, x[:4])
    PassManager([StabilizeGelu()]).run(gm)
    exact = (x.double() * 0.5 * torch.special.erfc(-x.double() / 2**0.5)).float()
    codes = lambda g: torch.ops.bitfold.fake_quantize(g * model.shift, "e2m1", model.scale)
    assert int((codes(F.gelu(x)) != codes(exact)).sum()) > 0
    stable = next(n for n in gm.graph.nodes if n.target is STABLE and n.args[1] == "none")
    assert stable.args[0].op == "placeholder"
    assert torch.equal(codes(torch.ops.bitfold.gelu(x)), codes(exact))


def test_on_the_float_graph_the_layers_to_be_quantized_say_which_gelus():
    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down, self.side = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)

        def forward(self, x):
            h = self.up(x)
            return self.down(F.gelu(h)) + self.side(F.gelu(h + 1))

    x = torch.randn(4, 8)
    model = Mlp().eval()
    gm = capture(model, x)
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    PassManager([StabilizeGelu([linears[1].name])], sample_inputs=(x,)).run(gm)
    stable = [n for n in gm.graph.nodes if n.target is STABLE]
    assert len(stable) == 1 and linears[1].args[0] is stable[0] and count(gm, GELU) == 1
    assert_same_outputs(gm, model, x)
