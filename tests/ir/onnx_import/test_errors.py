"""Failures are one OnnxImportError naming the file or node, attribute, domain and opset."""

import os

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from bitfold.ir.onnx_import import OnnxImportError, from_onnx
from tests.ir.onnx_import.harness import check, make_model, parse, run_fx

F = TensorProto.FLOAT


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _linear_model():
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(np.arange(3, dtype=np.float32), "fc.bias")
    node = helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)
    return make_model([node], [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], [weight, bias])


def test_is_a_value_error():
    assert issubclass(OnnxImportError, ValueError)


def test_unsupported_op_names_node_domain_and_opset():
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    model = make_model([node], [_vi("x", [2])], [_vi("y", [2])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OnnxImportError) as err:
        from_onnx(model)
    message = str(err.value)
    assert all(part in message for part in ("#0", "FancyOp", "com.example", "opset 17")), message
    assert len(message) < 300

    named = make_model([helper.make_node("NonZero", ["x"], ["y"], name="find_nonzero")], [_vi("x", [2])],
                       [_vi("y", [1, None], TensorProto.INT64)])
    with pytest.raises(OnnxImportError, match=r"'find_nonzero' \(NonZero\).*'ai\.onnx'.*opset 17"):
        from_onnx(named)


def test_unsupported_opset_version_is_precise():
    model = parse("g (int64 a, int64 b, int64 c) => (int64[N] y) { y = Range(a, b, c) }", opset=27, ir_version=13)
    expected = r"Range version 27 \(in effect at model opset 27\).*supported versions: 11-11"
    with pytest.raises(OnnxImportError, match=expected):
        from_onnx(model)


def test_unused_unsupported_nodes_are_ignored():
    model = parse("g (float[2] x) => (float[2] y) { y = Relu(x) \n z = NonZero(x) }")
    check(model)


def test_unsupported_attribute_value_names_node_and_attribute():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="stem", auto_pad="SAME_UPPER", strides=[2, 2])
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    model = make_model([node], [_vi("x", ["N", 3, "H", "W"])], [_vi("y", None)], [weight])
    with pytest.raises(OnnxImportError, match=r"'stem' \(Conv\): attribute auto_pad='SAME_UPPER'"):
        from_onnx(model)
    pool = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])
    model = make_model([pool], [_vi("x", [1, 3, 4, 4])], [_vi("y", None)])
    with pytest.raises(OnnxImportError, match=r"#0 \(AveragePool\): attribute pads=.*count_include_pad"):
        from_onnx(model)


def test_used_training_outputs_are_refused():
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool")
    model = make_model([node], [_vi("x", [1, 1, 4, 4])], [_vi("y", None), _vi("idx", None, TensorProto.INT64)])
    with pytest.raises(OnnxImportError, match="'pool' \\(MaxPool\\): the Indices output"):
        from_onnx(model)


def test_undefined_value_and_failed_fold_name_the_node():
    model = make_model([helper.make_node("Relu", ["ghost"], ["y"], name="r")], [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(OnnxImportError, match="'r' \\(Relu\\): value 'ghost' is not produced"):
        from_onnx(model)
    bad = parse("""g (float[2] x) => (float[2] y) {
        c = Constant<value = int64[6] {1, 2, 3, 4, 5, 6}>()
        s = Constant<value = int64[2] {4, 4}>()
        r = Reshape(c, s)
        f = Cast<to = 1>(r)
        y = Add(x, f)
    }""")
    with pytest.raises(OnnxImportError, match=r"#2 \(Reshape\): conversion failed: RuntimeError") as err:
        from_onnx(bad)
    assert err.value.__cause__ is not None


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "text", "truncated", "wrong type"])
def test_bad_files(tmp_path, case):
    path = tmp_path / "model.onnx"
    if case == "directory":
        path = tmp_path
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is a text file, not an ONNX model\n" * 4)
    elif case == "truncated":
        data = _linear_model().SerializeToString()
        path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(OnnxImportError) as err:
        from_onnx(12 if case == "wrong type" else path)
    message = str(err.value)
    if case == "wrong type":
        assert "path or an onnx.ModelProto" in message
        return
    assert str(path) in message
    expected = {"missing": "does not exist", "directory": "is a directory", "empty": "is empty",
                "text": "not a valid ONNX protobuf", "truncated": "truncated"}[case]
    assert expected in message
    if case in ("text", "truncated"):
        assert isinstance(err.value.__cause__, DecodeError)


def test_truncated_at_a_field_boundary(tmp_path):
    """A cut that still parses leaves an incomplete model, which is reported as such."""
    model = _linear_model()
    del model.graph.initializer[:]
    path = tmp_path / "cut.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxImportError, match="'fc.weight' is not produced.*malformed or truncated"):
        from_onnx(str(path))


def test_external_data(tmp_path):
    model = _linear_model()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    path = tmp_path / "linear.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    gm = from_onnx(path)
    x = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    expected = x["x"] @ weight.T + np.arange(3)
    np.testing.assert_allclose(run_fx(gm, x)[0].numpy(), expected, rtol=1e-5)

    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(OnnxImportError, match="external file 'weights.bin'.*pass the model's path"):
        from_onnx(unloaded)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(OnnxImportError, match="external data file 'weights.bin' of initializer 'fc.weight' is missing"):
        from_onnx(path)


def test_initializer_shadowing_a_graph_input_is_a_constant():
    model = _linear_model()
    model.graph.input.append(_vi("fc.bias", [3]))
    gm = from_onnx(model)
    assert gm.meta["onnx_inputs"] == ["x"]
    assert [n.target for n in gm.graph.find_nodes(op="placeholder")] == ["x"]
