"""The default CPU schedules reach every kernel a graph produces: nothing is left as the
naive single-threaded loop nest ``tvm.compile`` would build, and matmuls get the
register-blocked vector micro-kernel."""

import pytest
import torch
import tvm
from torch.export import Dim
from tvm import tirx

from bitfold.backends.tvm.build import legalize_and_fuse
from bitfold.backends.tvm.importer import GraphImporter
from bitfold.backends.tvm.schedule_cpu import cpu_schedule_pass, vector_bits
from bitfold.backends.tvm.signature import infer_input_specs
from bitfold.backends.tvm.target import resolve_target
from bitfold.ir import from_torch

from .test_lowering import Block


def _loop_kinds(func: tirx.PrimFunc) -> set:
    """Which annotated loop kinds the kernel's TVMScript contains."""
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}


@pytest.fixture(scope="module")
def scheduled():
    x, mask = torch.randn(2, 12, 16), torch.ones(2, 12)
    seq = Dim("seq", min=2, max=64)
    gm = from_torch(Block().eval(), (x, mask), dynamic_shapes=({1: seq}, {1: seq}))
    target = resolve_target("llvm -mcpu=znver3")
    mod = GraphImporter(gm, infer_input_specs(gm), target).run().mod
    with target:
        mod = tvm.transform.Sequential(legalize_and_fuse() + [cpu_schedule_pass()])(mod)
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_every_kernel_is_scheduled_and_parallel(scheduled):
    assert len(scheduled) >= 5
    for name, func in scheduled.items():
        assert func.attrs.get("tirx.is_scheduled"), f"{name} was not scheduled"
        assert "parallel" in _loop_kinds(func), f"{name} runs on one thread"


def test_matmuls_get_the_vector_micro_kernel(scheduled):
    matmuls = {n: f for n, f in scheduled.items() if "dense" in n or "matmul" in n}
    assert any("dense" in n for n in matmuls) and any("matmul" in n for n in matmuls)
    for name, func in matmuls.items():
        kinds = _loop_kinds(func)
        assert {"vectorized", "unroll"} <= kinds, f"{name}: {kinds}"


def test_vector_width_comes_from_the_cpu_features():
    assert vector_bits(resolve_target("llvm -mcpu=znver3")) == 256
    assert vector_bits(resolve_target("llvm -mcpu=skylake-avx512")) == 512
    assert vector_bits(resolve_target("llvm")) == 128
