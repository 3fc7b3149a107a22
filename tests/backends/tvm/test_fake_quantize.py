"""``bitfold::fake_quantize`` compiled by TVM is bit-identical to the PyTorch simulation.

One graph holds every case (format × granularity), so the whole file compiles once. Inputs
include the values where an implementation could disagree: ties for round-half-to-even,
signed zeros, subnormals, values past the format's maximum, and a ragged last group/block.
"""

import numpy as np
import pytest
import torch

from bitfold.backends.tvm import compile
from bitfold.ir import formats

pytestmark = pytest.mark.slow

ELEMENTWISE = ["int4", "int8", "uint4", "int2", "e2m1", "e3m0", "e1m2", "e4m0", "e4m3", "e5m2", "fp4_e2m1",
               "fp6_e2m3", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2", "nf4", "post4", "post8"]
BLOCK = ["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "nvfp4"]
ROWS, COLS, GROUP = 7, 67, 32  # 67 = 2 full groups/MX blocks + a ragged one


def _cases():
    g = torch.Generator().manual_seed(1)
    groups = -(-COLS // GROUP)
    cases = []
    for fmt in ELEMENTWISE:
        cases.append((fmt, torch.tensor(0.37), None, None, None))
        cases.append((fmt, torch.rand(ROWS, generator=g) + 0.05, 0, None, None))
        cases.append((fmt, torch.rand(ROWS, groups, generator=g) + 0.05, 1, GROUP, None))
    cases.append(("int4", torch.tensor(1.0), None, None, None))  # exact ties of the half-step row
    cases.append(("uint4", torch.rand(ROWS, generator=g) + 0.05, 0, None, torch.randint(0, 16, (ROWS,), generator=g).float()))
    cases.append(("int4", torch.rand(ROWS, groups, generator=g) + 0.05, 1, GROUP,
                  torch.randint(-4, 4, (ROWS, groups), generator=g).float()))
    cases += [(fmt, None, None, None, None) for fmt in BLOCK]
    cases.append(("mxfp4", None, 0, None, None))  # blocks along the other axis
    return cases


class AllFakeQuantizers(torch.nn.Module):
    def __init__(self, cases):
        super().__init__()
        self.cases = []
        for i, (fmt, scale, axis, group, zp) in enumerate(cases):
            for kind, value in (("scale", scale), ("zp", zp)):
                if value is not None:
                    self.register_buffer(f"{kind}{i}", value)
            self.cases.append((fmt, None if scale is None else f"scale{i}", axis, group, None if zp is None else f"zp{i}"))

    def forward(self, x):
        return tuple(
            torch.ops.bitfold.fake_quantize(x, fmt, None if s is None else getattr(self, s), axis, group,
                                            None if z is None else getattr(self, z))
            for fmt, s, axis, group, z in self.cases)


def _input():
    x = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0)) * 3
    x[0, :8] = torch.tensor([0.0, -0.0, 1e-30, -5e-39, 1e6, -1e6, 3.4e38, 1.2e-38])
    x[1] = torch.arange(-33, 34) * 0.25  # halves of the unit grid: ties to even for int formats
    e2m1_ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    x[2, :7], x[2, 7:14] = e2m1_ties * 0.37, -e2m1_ties * 0.37  # ties of e2m1 at scale 0.37
    return x


@pytest.fixture(scope="module")
def compiled():
    cases = _cases()
    model = AllFakeQuantizers(cases).eval()
    x = _input()
    return cases, model, compile(model, "llvm", example_inputs=(x,)), x


def test_every_format_and_layout_is_bit_exact(compiled):
    cases, model, cm, x = compiled
    with torch.no_grad():
        want = model(x)
    got = cm(x)
    assert len(got) == len(cases)
    bad = []
    for (fmt, scale, axis, group, zp), g, w in zip(cases, got, want):
        g, w = g.numpy(), w.numpy()
        mismatched = int((g.view(np.int32) != w.view(np.int32)).sum())
        if mismatched:
            bad.append(f"{fmt} axis={axis} group={group} zp={zp is not None}: {mismatched} values differ")
    assert not bad, "\n".join(bad)


def test_the_cases_cover_every_format_family():
    kinds = {type(formats.get(fmt)).__name__ for fmt, *_ in _cases()}
    assert kinds == {"IntFormat", "FloatFormat", "CodebookFormat", "BlockFormat"}
