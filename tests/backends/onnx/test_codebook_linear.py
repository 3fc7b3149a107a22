"""bitfold::codebook_linear in ONNX: lowered placeholders and a whole SplitQuant model, vs PyTorch."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import bitfold
from bitfold.backends.onnx import export_onnx, ort_session, read_metadata
from bitfold.backends.onnx.lowering import ExportOptions, lower_placeholders
from bitfold.ir import formats, ops

from ._graphs import OPSET, run

N, K = 24, 200  # K not a multiple of the group size: a ragged last group


def make_codebook(fmt: str, k: int, group=None, zero=False, seed=0) -> ops.CodebookWeight:
    """A split weight in codebook form: value tertiles (or halves, quarters) per row, each cluster
    quantized with its own range that includes zero, as the split pass and MinMax produce."""
    f = formats.get(fmt)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.exp2(torch.randint(-3, 3, (N, 1), generator=g).float())
    edges = torch.quantile(w, torch.linspace(0, 1, k + 1)[1:-1], dim=1).T.contiguous()
    ids = torch.searchsorted(edges, w.contiguous())
    layout = {"axis": 0} if group is None else {"axis": 1, "group_size": group}
    codes, scales, zeros = [], [], []
    for c in range(k):
        part = torch.where(ids == c, w, torch.zeros(()))
        rows = part if group is None else torch.nn.functional.pad(part, (0, -K % group)).unflatten(1, (-1, group))
        if zero:
            lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
            s = ((hi - lo) / (f.qmax - f.qmin)).clamp_min(1e-8)
            z = torch.round(f.qmin - lo / s).clamp(f.qmin, f.qmax)
        else:
            s, z = (rows.abs().amax(-1) / f.max).clamp_min(1e-8), None
        codes.append(f.encode(part, s, zero_point=z, **layout))
        scales.append(s)
        zeros.append(z)
    return ops.codebook_from_codes(torch.stack(codes).gather(0, ids[None])[0], ids, fmt, torch.stack(scales), group,
                                   torch.stack(zeros) if zero else None)


def placeholder_model(weight: ops.CodebookWeight, shift=None, bias=None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight.packed_codes.numpy(), "codes"),
             numpy_helper.from_array(weight.packed_ids.numpy(), "ids"),
             numpy_helper.from_array(weight.scale.numpy(), "scale")]
    inputs = ["x", "codes", "ids", "scale", "", "", ""]
    for i, name, value in ((4, "zero", weight.zero_point), (5, "shift", shift), (6, "bias", bias)):
        if value is not None:
            inits.append(numpy_helper.from_array(value.numpy(), name))
            inputs[i] = name
    attrs = {"fmt": weight.fmt, "out_features": N, "in_features": K, "clusters": weight.clusters, "layer": "fc"}
    if weight.group_size is not None:
        attrs["group_size"] = weight.group_size
    node = helper.make_node("codebook_linear", inputs, ["y"], domain="bitfold", **attrs)
    graph = helper.make_graph([node], "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 5, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("bitfold", 1)])
    model.ir_version = 10
    return model


def reference(weight: ops.CodebookWeight, x, shift=None, bias=None) -> np.ndarray:
    return torch.ops.bitfold.codebook_linear(x, weight.packed_codes, weight.packed_ids, weight.fmt, N, K,
                                             weight.clusters, weight.scale, weight.group_size, weight.zero_point,
                                             shift, bias).numpy()


def rel_error(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("mode", ["simulate", "compressed"])
@pytest.mark.parametrize("fmt,k,group,zero", [("uint2", 3, None, True), ("uint3", 2, 32, True),
                                              ("e2m1", 3, None, False), ("uint2", 4, 64, True)])
def test_lowered_layer_matches_the_op(mode, fmt, k, group, zero):
    weight = make_codebook(fmt, k, group, zero)
    shift = torch.randint(0, 3, (K,), dtype=torch.int32)
    bias = torch.randn(N)
    model = placeholder_model(weight, shift, bias)
    ctx = lower_placeholders(model, ExportOptions(mode=mode))
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(2, 5, K) * torch.exp2(shift.float())
    assert rel_error(run(model, {"x": x.numpy()}), reference(weight, x, shift, bias)) < 1e-5
    facts = ctx.layers["fc"]
    used = [n.op_type for n in model.graph.node]
    assert used.count("MatMul") == 1 and facts["clusters"] == k  # one GEMM, not k
    if mode == "compressed":
        bits = formats.get(fmt).bits + ops.cluster_id_bits(k)
        container_bits = 4 if bits <= 4 else 8
        groups = 1 if group is None else -(-K // group)
        assert facts["container"] == f"uint{container_bits}" and "GatherElements" in used
        assert facts["stored_bytes"] == N * K * container_bits // 8 + 2**bits * groups * N * 4


def test_compressed_weight_decodes_bit_for_bit():
    weight = make_codebook("uint2", 3, 32, zero=True, seed=3)
    model = placeholder_model(weight)
    lower_placeholders(model, ExportOptions(mode="compressed"))
    # Make the decoded weight an output and compare it with PyTorch's decode.
    decoded = next(n for n in model.graph.node if n.op_type == "GatherElements").output[0]
    model.graph.output.append(helper.make_tensor_value_info(decoded, TensorProto.FLOAT, [K, N]))
    session = ort_session(model.SerializeToString())
    got = session.run([decoded], {"x": np.zeros((1, 5, K), np.float32)})[0]
    assert np.array_equal(got, weight.unpack().T.numpy())


@pytest.mark.slow
def test_split_quantized_model_exports_and_agrees(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    data = [(torch.randn(4, 32),) for _ in range(4)]
    q = bitfold.quantize(model, "w2a16-int-split", data, progress=False)
    x = torch.randn(2, 32)
    path = export_onnx(q, tmp_path / "split.onnx", (x,), mode="compressed")
    session = ort_session(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert rel_error(got, q(x).numpy()) < 1e-5
    layers = read_metadata(path)["layers"]
    assert sorted(f["op"] for f in layers.values()) == ["codebook_linear"] * 2
    assert all(f["container"] == "uint4" for f in layers.values())  # 2-bit code + 2-bit cluster id
