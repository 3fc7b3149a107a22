"""The CPU row-softmax kernel against PyTorch: whole vectors, scalar tails, masked rows."""

import numpy as np
import pytest
import torch
import tvm

from bitfold.codegen.cpu_softmax import EXP_FLUSH, ROWS_PER_TASK, build_softmax_kernel, exp_approx
from bitfold.codegen.kernel import host_cpu_target


@pytest.fixture(scope="module")
def softmax():
    lib = tvm.compile(tvm.IRModule({"main": build_softmax_kernel().with_attr("global_symbol", "main")}),
                      host_cpu_target())
    dev = tvm.cpu()

    def run(x: np.ndarray) -> np.ndarray:
        y = tvm.runtime.tensor(np.zeros_like(x), dev)
        lib.mod["main"](tvm.runtime.tensor(x, dev), y)
        return y.numpy()

    return run


# Row lengths: under one vector, exactly one, vectors plus a tail, MiniLM's 128, a long row.
# Row counts: under and over one task.
@pytest.mark.parametrize("rows,n", [(3, 1), (5, 7), (ROWS_PER_TASK, 8), (17, 13), (2, 75), (40, 128), (1, 1000)])
def test_matches_torch_softmax(softmax, rows, n):
    x = (np.random.default_rng(n).standard_normal((rows, n)) * 6).astype(np.float32)
    got, want = softmax(x), torch.softmax(torch.from_numpy(x), -1).numpy()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_masked_positions_get_zero_like_torch(softmax):
    """An attention mask adds float32's lowest value (or -inf) to the positions it hides."""
    x = np.random.default_rng(0).standard_normal((4, 37)).astype(np.float32)
    x[0, 5:] = np.finfo(np.float32).min
    x[1, :30] = -np.inf
    x[2, ::3] += np.finfo(np.float32).min
    got, want = softmax(x), torch.softmax(torch.from_numpy(x), -1).numpy()
    assert np.array_equal(got == 0, want == 0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)


def test_exp_approximation_is_within_a_few_ulp():
    """``exp_approx`` as a scalar PrimFunc over float32's useful range, against float64."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    n = 20001
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("main")
            x = T.arg("x", T.buffer((n,), "float32"))
            y = T.arg("y", T.buffer((n,), "float32"))
            with T.serial(n) as i:
                T.buffer_store(y, exp_approx(x[i]), [i])
    lib = tvm.compile(tvm.IRModule({"main": builder.get()}), host_cpu_target())
    xs = np.linspace(EXP_FLUSH, 88.0, n, dtype=np.float32)
    out = tvm.runtime.tensor(np.zeros(n, np.float32))
    lib.mod["main"](tvm.runtime.tensor(xs), out)
    exact = np.exp(xs.astype(np.float64))
    assert (np.abs(out.numpy() - exact) / exact).max() < 5e-7
