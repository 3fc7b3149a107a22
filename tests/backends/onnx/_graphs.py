"""Build a one-input ONNX model from an emitter callback and run it in ONNX Runtime."""

from typing import Callable, Dict, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from bitfold.backends.onnx.emitter import Emitter, NameScope
from bitfold.backends.onnx.functions import FUNCTION_DOMAIN, FunctionLibrary
from bitfold.backends.onnx.runtime import ort_session

OPSET = 21


def build_model(
    emit: Callable[[Emitter, FunctionLibrary, str], str], shape: Sequence, dtype: int = TensorProto.FLOAT
) -> onnx.ModelProto:
    """``y = emit(x)`` as a checked model with input ``x`` of ``shape``."""
    scope = NameScope(["x"])
    em = Emitter(scope, "test")
    library = FunctionLibrary(OPSET)
    out = emit(em, library, "x")
    em.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(em.nodes, "test", [helper.make_tensor_value_info("x", dtype, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], em.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(FUNCTION_DOMAIN, 1)],
                              functions=library.functions)
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> np.ndarray:
    """The first output; ONNX Runtime's own DQ+MatMul → MatMulNBits fusion kept in float32."""
    session = ort_session(model.SerializeToString(), qdq_matmulnbits_accuracy_level=1)
    return session.run(None, feeds)[0]
