"""The default CPU schedules reach every kernel a graph produces: nothing is left as the
naive single-threaded loop nest ``tvm.compile`` would build, and matmuls get the
register-blocked vector micro-kernel. Checked structurally (loop kinds in the scheduled TIR),
so a kernel that loses its schedule fails here whatever the machine's load."""

import pytest
import torch
import tvm
from torch.export import Dim
from tvm import s_tir, tirx

from bitfold.backends.tvm.build import legalize_and_fuse
from bitfold.backends.tvm.importer import GraphImporter
from bitfold.backends.tvm.schedule_cpu import cpu_schedule_pass, parallel_prefix, vector_bits
from bitfold.backends.tvm.signature import infer_input_specs
from bitfold.backends.tvm.target import resolve_target
from bitfold.ir import from_torch

from .test_lowering import Block


def _loop_kinds(func: tirx.PrimFunc) -> set:
    """Which annotated loop kinds the kernel's TVMScript contains."""
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}


def _schedule(gm: torch.fx.GraphModule) -> dict:
    """The graph's kernels after fusion and the default CPU schedules, by name; kernels that
    arrive scheduled (bitfold.codegen's low-bit GEMMs, which pick their own threading) left out."""
    target = resolve_target("llvm -mcpu=znver3")
    mod = GraphImporter(gm, infer_input_specs(gm), target).run().mod
    with target:
        fused = tvm.transform.Sequential(legalize_and_fuse())(mod)
        own = {gv.name_hint for gv, f in fused.functions_items()
               if isinstance(f, tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled")}
        mod = cpu_schedule_pass()(fused)
    return {gv.name_hint: f for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and gv.name_hint not in own}


def _serial_nests(func: tirx.PrimFunc) -> list:
    """The loop nests of ``func``'s blocks that have no parallel loop, as lists of extents."""
    sch = s_tir.Schedule(func)
    nests, stack = [], list(sch.get_child_blocks(sch.get_sblock("root")))
    while stack:
        block = stack.pop()
        loops = sch.get_loops(block)
        if loops and not any(sch.get(loop).kind == tirx.ForKind.PARALLEL for loop in loops):
            nests.append([sch.get(loop).extent for loop in loops])
        stack.extend(sch.get_child_blocks(block))
    return nests


@pytest.fixture(scope="module")
def scheduled():
    x, mask = torch.randn(2, 12, 16), torch.ones(2, 12)
    seq = Dim("seq", min=2, max=64)
    return _schedule(from_torch(Block().eval(), (x, mask), dynamic_shapes=({1: seq}, {1: seq})))


def test_every_kernel_is_scheduled_and_parallel(scheduled):
    assert len(scheduled) >= 5
    for name, func in scheduled.items():
        assert func.attrs.get("tirx.is_scheduled"), f"{name} was not scheduled"
        assert "parallel" in _loop_kinds(func), f"{name} runs on one thread"


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["fp32", "w4a4-int"])
def test_no_minilm_kernel_is_left_a_serial_loop_nest(graph, minilm_graph, minilm_w4a4):
    """Every kernel of MiniLM (fp32; 2 layers quantized w4a4-int) does its work in parallel loops. The one serial loop
    nest allowed is a single loop over a symbolic size: a vector of token indices or mask
    positions (O(batch·seq) work, where every layer does O(batch·seq·hidden)), which a thread
    pool wake-up would cost more than it saves. A per-token op left unscheduled (the attention
    mask, a cast, a layout change) has a loop over the hidden size and fails."""
    kernels = _schedule(minilm_graph if graph == "fp32" else minilm_w4a4[1].graph_module)
    assert len(kernels) >= 15
    for name, func in kernels.items():
        for extents in _serial_nests(func):
            assert len(extents) == 1 and not isinstance(extents[0], tirx.IntImm), \
                f"{name}: serial loop nest {extents}\n{func.script()}"


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


class Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_norm = torch.nn.LayerNorm(64)
        self.rms_norm = torch.nn.RMSNorm(64, eps=1e-6)

    def forward(self, x):
        return self.rms_norm(self.layer_norm(x) * 3.0 + 1.0)


def test_row_reductions_accumulate_across_vector_lanes():
    """LayerNorm's and RMSNorm's sums over 64 features run as per-lane partial sums in a
    vectorized loop (one accumulator chain per row would be latency-bound), and still match."""
    from bitfold.backends.tvm import compile as tvm_compile

    torch.manual_seed(0)
    model = Norms().eval()
    x = torch.randn(2, 12, 64) * 4 + 2
    gm = from_torch(model, (x,), dynamic_shapes=({1: Dim("seq", min=2, max=64)},))
    kernels = _schedule(gm)
    partials = [name for name, func in kernels.items() if "_rf" in func.script()]
    assert partials, list(kernels)
    for name in partials:
        assert "vectorized" in _loop_kinds(kernels[name])
    compiled = tvm_compile(gm, "llvm")
    for length in (1, 7, 33):
        x = torch.randn(2, length, 64) * 4 + 2
        with torch.no_grad():
            want = model(x)
        assert float((compiled(x) - want).abs().max() / want.abs().max()) <= 1e-5


def test_parallel_loops_stop_fusing_once_there_is_enough_work():
    n = tirx.Var("n", "int64")
    a = tvm.te.placeholder((12, n, 8), name="a")
    b = tvm.te.compute((12, n, 8), lambda i, j, k: a[i, j, k] * 2.0, name="b")
    sch = s_tir.Schedule(tvm.te.create_prim_func([a, b]))
    loops = sch.get_loops(sch.get_sblock("b"))
    assert parallel_prefix(sch, loops, 8) == loops[:1]
    assert parallel_prefix(sch, loops, 24) == loops
    assert parallel_prefix(sch, loops[1:], 4) == loops[1:]


def test_cpu_softmax_is_one_vector_kernel():
    """The Block's softmax compiles to the row kernel of bitfold.codegen, not TE's four."""
    target = resolve_target("llvm -mcpu=znver3")
    x, mask = torch.randn(2, 12, 16), torch.ones(2, 12)
    gm = from_torch(Block().eval(), (x, mask))
    with target:
        mod = tvm.transform.Sequential(legalize_and_fuse())(GraphImporter(gm, infer_input_specs(gm), target).run().mod)
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    assert "bitfold_softmax_rows" in names
    assert not any("fast_exp" in name for name in names), names
