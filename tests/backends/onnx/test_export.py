"""export_onnx on a tiny quantized transformer: structure, numerics, names, metadata, round trip."""

import numpy as np
import onnx
import pytest
import torch

import bitfold
from bitfold.backends.onnx import ort_session, read_metadata
from bitfold.backends.onnx.agreement import agreement
from bitfold.backends.onnx.runtime import run
from bitfold.ir import from_onnx
from bitfold.ir.onnx_import import OnnxImportError

pytestmark = pytest.mark.slow  # the shared fixture exports the tiny model twice (tens of seconds)


def op_types(path):
    return [(n.domain + "::" if n.domain else "") + n.op_type for n in onnx.load(path).graph.node]


@pytest.mark.parametrize("mode", ["simulate", "compressed"])
def test_onnx_runtime_matches_the_torch_simulation(exported, tiny, tiny_inputs, mode):
    got = run(ort_session(exported[mode]), [tiny_inputs])[0]
    result = agreement(got, tiny(tiny_inputs))
    assert result.max_rel < 1e-5 and result.argmax_match == 1.0, result


def test_quantizers_are_qdq_where_onnx_runtime_has_the_type_else_one_function_per_format(exported):
    for mode in ("simulate", "compressed"):
        ops = op_types(exported[mode])
        assert ops.count("bitfold.quant::FakeQuantize_e2m1") == 1 and ops.count("bitfold.quant::FakeQuantize_nf4") == 1
        assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 1  # the INT4 activation
        assert sorted(f.name for f in onnx.load(exported[mode]).functions) == ["FakeQuantize_e2m1", "FakeQuantize_nf4"]


def test_simulate_keeps_float_weights_and_compressed_stores_codes(exported):
    assert op_types(exported["simulate"]).count("MatMul") == 7  # five linears and two attention products
    compressed = onnx.load(exported["compressed"])
    ops = op_types(exported["compressed"])
    assert ops.count("com.microsoft::MatMulNBits") == 2  # the INT4 and UINT4 weights
    codes = {t.name: t.data_type for t in compressed.graph.initializer if t.name.endswith("weight_codes")}
    assert sorted(codes) == ["linear/weight_codes", "linear_1/weight_codes", "linear_2/weight_codes",
                             "linear_3/weight_codes", "linear_4/weight_codes"]
    assert codes["linear/weight_codes"] == onnx.TensorProto.UINT4  # E2M1: uint4 codes + Gather
    assert exported["compressed"].stat().st_size < 0.6 * exported["simulate"].stat().st_size


def test_preshift_survives_as_an_exact_power_of_two(exported, tiny):
    (shift_node,) = [n for n in tiny.graph_module.graph.nodes if str(n.target).endswith("layer_norm_input_scale")]
    shift = getattr(tiny.graph_module, shift_node.target)
    model = onnx.load(exported["compressed"])
    factors = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if "input_shift_factor" in t.name}
    assert sorted(factors) == ["linear/input_shift_factor", "linear_1/input_shift_factor"]
    for f in factors.values():
        assert np.array_equal(f, 1 / shift.numpy())  # 2^-k undoes the 2^k applied before the quantizer, exactly


def test_names_dynamic_axes_and_metadata(exported):
    path = exported["compressed"]
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ["ids"] and [o.name for o in model.graph.output] == ["output"]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == \
        ["batch", "sequence", 10]
    meta = read_metadata(path)
    assert meta["version"] == bitfold.__version__ and meta["mode"] == "compressed" and meta["opset"] == 21
    assert meta["recipe"]["name"] == "tiny-mixed" and meta["dynamic_axes"] == {"ids": {"0": "batch", "1": "sequence"}}
    assert meta["accuracy_level"] == 1
    layers = meta["layers"]
    assert layers["linear_2"]["lowering"] == "MatMulNBits(block 64, accuracy_level 1)"
    assert layers["linear_3"]["granularity"] == "group32" and layers["linear"]["input_shift"] is True
    assert layers["linear_4"]["lowering"] == "Gather(uint4 codes)"
    assert layers["linear.input_quantizer"] == {"op": "fake_quantize", "format": "e2m1", "lowering": "local function",
                                                "scale": pytest.approx(layers["linear.input_quantizer"]["scale"])}
    onnx.checker.check_model(str(path), full_check=True)


def test_simulate_file_reimports_with_from_onnx(exported, tiny, tiny_inputs):
    """``from_onnx(export_onnx(q))`` runs and matches both ONNX Runtime and the original simulation."""
    path = exported["simulate"]
    gm = from_onnx(path)
    with torch.no_grad():
        got = gm(tiny_inputs)[0]
    for reference in (run(ort_session(path), [tiny_inputs])[0], tiny(tiny_inputs)):
        result = agreement(got, reference)
        assert result.max_rel < 1e-5 and result.argmax_match == 1.0, result
    assert sum(n.target == torch.ops.aten.round.default for n in gm.graph.nodes) >= 1  # quantizers came back


def test_compressed_file_is_refused_by_from_onnx_naming_the_tensor(exported):
    """4-bit initializers have no torch type: the importer names the tensor instead of guessing."""
    with pytest.raises(OnnxImportError, match=r"tensor 'linear/weight_codes': element type UINT4"):
        from_onnx(exported["compressed"])
