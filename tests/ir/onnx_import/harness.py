"""Shared test helpers: build small ONNX models, run them in ONNX Runtime and through from_onnx.

``check`` is the one assertion most tests make: the imported GraphModule is in canonical
form (ATen overloads, ``operator`` and ``getitem`` calls only) and matches ONNX Runtime on
the same inputs within a relative error of 1e-5 (max |Δ| over max |reference|).
"""

from __future__ import annotations

import operator
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import torch
from onnx import helper
from torch import fx

from bitfold.ir.onnx_import import from_onnx

TOL = 1e-5


def parse(graph_text: str, opset: int = 17, ir_version: int = 9) -> onnx.ModelProto:
    """A model from ONNX's text syntax for one graph, in the default domain at ``opset``."""
    return onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{graph_text}')


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17, ir_version: int = 9) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def random_inputs(model: onnx.ModelProto, sizes: Optional[Mapping[str, int]] = None,
                  seed: int = 0) -> Dict[str, np.ndarray]:
    """Random feeds for every non-initializer graph input; ``sizes`` gives dim_param values."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tt = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (sizes or {}).get(d.dim_param, 2) for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) > 0.5
        else:
            feeds[value.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def assert_canonical(gm: fx.GraphModule) -> None:
    """Only placeholders, get_attr, ATen overloads, ``operator`` functions and the output."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            target = node.target
            aten_op = isinstance(target, torch._ops.OpOverload) and target.namespace == "aten"
            assert aten_op or getattr(operator, getattr(target, "__name__", ""), None) is target, node.format_node()
        else:
            assert node.op in ("placeholder", "get_attr", "output"), node.format_node()


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def run_fx(gm: fx.GraphModule, feeds: Mapping[str, np.ndarray]) -> tuple:
    args = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in gm.meta["onnx_inputs"]]
    with torch.no_grad():
        return gm(*args)


def assert_close(actual: Sequence[torch.Tensor], expected: Sequence[np.ndarray], tol: float = TOL) -> None:
    assert isinstance(actual, tuple) and len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        a = a.detach().numpy()
        assert a.dtype == e.dtype, f"output {k}: dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"output {k}: shape {a.shape} != {e.shape}"
        if a.size == 0:
            continue
        if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, e, err_msg=f"output {k}")
            continue
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        nan = np.isnan(e64)
        assert np.array_equal(nan, np.isnan(a64)), f"output {k}: NaNs differ"
        scale = max(np.abs(e64[~nan]).max(initial=0.0), 1e-30)
        err = np.abs(a64[~nan] - e64[~nan]).max(initial=0.0) / scale
        assert err <= tol, f"output {k}: relative error {err:.3g} > {tol}"


def check(model: onnx.ModelProto, feeds: Optional[Mapping[str, np.ndarray]] = None,
          sizes: Optional[Mapping[str, int]] = None, tol: float = TOL) -> fx.GraphModule:
    """Import ``model``, check canonical form, and compare with ONNX Runtime on ``feeds``."""
    gm = from_onnx(model)
    assert_canonical(gm)
    feeds = dict(feeds) if feeds is not None else random_inputs(model, sizes)
    assert_close(run_fx(gm, feeds), run_ort(model, feeds), tol)
    return gm


def targets(gm: fx.GraphModule) -> list:
    """The call targets of ``gm`` in graph order (for structural assertions)."""
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]
