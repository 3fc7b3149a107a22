"""A tiny transformer quantized with a hand-made mixed plan, exported once per mode for all tests.

One graph covers the export paths: an FP4 (E2M1) activation quantizer with LLM-FP4's
pre-shift (a local function, the shift folded into the LayerNorm), an INT4 activation
(Q/DQ), an NF4 activation (local function), and weights in E2M1 and E3M0 per channel
(uint4 codes + Gather when compressed), INT4 per channel and UINT4 per group of 32 with a
zero point (MatMulNBits), and E2M1 per group (weight-only head).
"""

import pytest
import torch

from bitfold.api import QuantizedModel
from bitfold.backends.onnx import export_onnx
from bitfold.ir import formats, from_torch
from bitfold.passes import EliminateDeadCode, PassManager, run_standard_passes
from bitfold.passes.fold_preshift import FoldPreshift
from bitfold.passes.preshift import preshift_exponents
from bitfold.passes.quantize_linears import ActivationPlan, QuantizeLinears, WeightPlan


class TinyTransformer(torch.nn.Module):
    """Embedding, LayerNorm with outlier channels, one attention mixer, a GELU MLP, a head."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(50, 64)
        self.ln = torch.nn.LayerNorm(64)
        self.q, self.k = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
        self.up, self.down = torch.nn.Linear(64, 160), torch.nn.Linear(160, 64)
        self.ln2 = torch.nn.LayerNorm(64)
        self.head = torch.nn.Linear(64, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            self.ln.weight.mul_(torch.rand(64, generator=g) * 12)  # a few channels 10x larger

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.emb(ids))
        h = self.ln2(h + torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / 8, -1) @ h)
        return self.head(h + self.down(torch.nn.functional.gelu(self.up(h))))


def tokens(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _weight_plan(w: torch.Tensor, fmt_name: str, group=None, zero=False) -> WeightPlan:
    fmt = formats.get(fmt_name)
    rows = w if group is None else torch.nn.functional.pad(w, (0, -w.shape[1] % group)).unflatten(1, (-1, group))
    if zero:
        lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        return WeightPlan(fmt.name, scale, group, torch.round(fmt.qmin - lo / scale).clamp(fmt.qmin, fmt.qmax))
    return WeightPlan(fmt.name, rows.abs().amax(-1) / fmt.max, group)


def _activations(model: TinyTransformer, x: torch.Tensor) -> dict:
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0]
        return hook

    hooks = [getattr(model, name).register_forward_hook(keep(name)) for name in ("q", "up", "down")]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def quantize_tiny() -> QuantizedModel:
    model = TinyTransformer().eval()
    x = tokens(4, 12, seed=1)
    seen = _activations(model, x)
    w = {name: getattr(model, name).weight.detach().clone() for name in ("q", "k", "up", "down", "head")}
    gm = from_torch(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC},))
    run_standard_passes(gm, sample_inputs=(x,))
    e2m1, nf4, int4 = formats.get("e2m1"), formats.get("nf4"), formats.get("int4")
    channel_max = seen["q"].abs().flatten(0, 1).amax(0)
    _, shift = preshift_exponents(channel_max, e2m1)
    shifted_max = float((channel_max * torch.exp2(shift.float())).max())
    activations = {
        "layer_norm": ActivationPlan("e2m1", shifted_max / e2m1.max, shift=shift),
        "layer_norm_1": ActivationPlan("int4", float(seen["up"].abs().max()) / int4.max),
        "gelu": ActivationPlan("nf4", float(seen["down"].abs().max()) / nf4.max),
    }
    weights = {
        "linear": _weight_plan(w["q"], "e2m1"), "linear_1": _weight_plan(w["k"], "e3m0"),
        "linear_2": _weight_plan(w["up"], "int4"), "linear_3": _weight_plan(w["down"], "uint4", 32, zero=True),
        "linear_4": _weight_plan(w["head"], "e2m1", 32),
    }
    QuantizeLinears(weights, activations).run(gm)
    PassManager([FoldPreshift(), EliminateDeadCode()], sample_inputs=(x,)).run(gm)
    return QuantizedModel(gm, {"name": "tiny-mixed", "version": 1}, [], {})


@pytest.fixture(scope="session")
def tiny():
    return quantize_tiny()


@pytest.fixture(scope="session")
def tiny_inputs():
    """An evaluation batch with another batch size and length than the export example."""
    return tokens(3, 11, seed=99)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny):
    """``exported[mode]``: the tiny model exported in that mode (MatMulNBits at accuracy level 1)."""
    root = tmp_path_factory.mktemp("onnx")
    return {mode: export_onnx(tiny, root / f"tiny-{mode}.onnx", (tokens(2, 5, seed=7),), mode=mode, accuracy_level=1)
            for mode in ("simulate", "compressed")}
