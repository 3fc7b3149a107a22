"""Issue 3 on real models: capture through torch.export and through ONNX, then the
standard passes; outputs stay equal to the source model and norms/BN end up canonical."""

import pytest
import torch

from bitfold.ir import from_onnx, from_torch
from bitfold.passes import run_standard_passes

aten = torch.ops.aten
pytestmark = pytest.mark.slow

#: What the standard passes must leave behind, per model.
EXPECTED = {
    "efficientnet-lite0": {aten.batch_norm.default: 0, aten.conv2d.default: 49, aten.linear.default: 1},
    "minilm": {aten.layer_norm.default: 13, aten.linear.default: 36},
    "smollm2": {aten.rms_norm.default: 61, aten.linear.default: 211},
}
NORM_PIECES = (aten.rsqrt.default, aten.sqrt.default, aten.batch_norm.default)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a[0] if isinstance(a, (tuple, list)) else a
    return float((a.detach() - b).abs().max() / b.abs().max())


def _counts(gm):
    counts = {}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def _check_canonical(name, gm):
    counts = _counts(gm)
    for target, expected in EXPECTED[name].items():
        assert counts.get(target, 0) == expected, f"{name}: {target} x{counts.get(target, 0)}, expected {expected}"
    assert not any(counts.get(t, 0) for t in NORM_PIECES), f"{name}: a norm was left decomposed"


def test_torch_capture_and_standard_passes(real_model):
    inputs = real_model.example_inputs(batch=2, seq=16)
    reference = real_model(*inputs)
    gm = from_torch(real_model.module, inputs)
    assert _rel(gm(*inputs), reference) <= 1e-5
    run_standard_passes(gm, sample_inputs=inputs)  # verifies every pass against the graph
    assert _rel(gm(*inputs), reference) <= 1e-5
    _check_canonical(real_model.name, gm)


def test_onnx_capture_and_standard_passes(real_model, tmp_path):
    import onnxruntime as ort

    inputs = real_model.example_inputs(batch=2, seq=16)
    reference = real_model(*inputs)
    path = tmp_path / f"{real_model.name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            real_model.module, inputs, str(path), dynamo=False, opset_version=17,
            input_names=list(real_model.input_names), output_names=list(real_model.output_names),
            dynamic_axes={
                name: {ax: nm for ax, (nm, _, _) in axes.items()}
                for name, axes in zip(real_model.input_names, real_model.dynamic_axes)
            },
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: x.numpy() for name, x in zip(real_model.input_names, inputs)}
    ort_out = torch.from_numpy(session.run(None, feeds)[0])
    assert _rel(ort_out, reference) <= 1e-4

    gm = from_onnx(path)
    assert _rel(gm(*inputs), ort_out) <= 1e-5
    assert _rel(gm(*inputs), reference) <= 1e-4
    run_standard_passes(gm, sample_inputs=inputs)
    assert _rel(gm(*inputs), ort_out) <= 1e-5
    _check_canonical(real_model.name, gm)
