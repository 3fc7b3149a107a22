"""Every zoo model captures with torch.export and exports to ONNX that ONNX Runtime runs
with the same outputs. Exported files go to pytest's tmp_path only."""

import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

MODELS = ["efficientnet-lite0", "minilm", "smollm2"]


def _call_targets(ep):
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.fixture
def model(request):
    """The session-scoped loaded model named by the parameter (loaded on first use)."""
    fixture = {"efficientnet-lite0": "effnet", "minilm": "minilm", "smollm2": "smollm2"}[request.param]
    return request.getfixturevalue(fixture)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_torch_export_matches_eager(model):
    ep = model.export(batch=1, seq=16)
    inputs = model.example_inputs(batch=1, seq=16)
    torch.testing.assert_close(ep.module()(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)
    targets = _call_targets(ep)
    # canonical ATen form, no higher-order ops (export runs under no_grad for that)
    assert not any("wrap_with" in t for t in targets), targets
    assert ("aten.linear.default" in targets) or ("aten.conv2d.default" in targets)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["efficientnet-lite0", "minilm"], indirect=True)
def test_torch_export_dynamic_shapes(model):
    ep = model.export(batch=2, seq=16, dynamic=True)
    other = model.example_inputs(batch=3, seq=24)
    torch.testing.assert_close(ep.module()(*other), model(*other), atol=1e-5, rtol=1e-5)


def _onnx_roundtrip(model, path, dynamo, seq=16):
    inputs = model.example_inputs(batch=1, seq=seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.module,
            inputs,
            str(path),
            dynamo=dynamo,
            input_names=list(model.input_names),
            output_names=list(model.output_names),
            **({"verbose": False} if dynamo else {}),
        )
    proto = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in proto.graph.input] == list(model.input_names)
    assert [o.name for o in proto.graph.output] == list(model.output_names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {name: t.numpy() for name, t in zip(model.input_names, inputs)})
    ref = model(*inputs).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-4, rtol=1e-3)
    return proto


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_onnx_export_dynamo(model, tmp_path):
    path = tmp_path / f"{model.name}.onnx"
    proto = _onnx_roundtrip(model, path, dynamo=True, seq=8)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {20}
    # the dynamo exporter stores weights next to the graph
    assert os.path.exists(str(path) + ".data")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["efficientnet-lite0", "minilm"], indirect=True)
def test_onnx_export_legacy_torchscript(model, tmp_path):
    _onnx_roundtrip(model, tmp_path / f"{model.name}.onnx", dynamo=False)
