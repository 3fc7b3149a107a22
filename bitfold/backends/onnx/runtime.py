"""Open and run exported models in ONNX Runtime (CPU provider).

``ort_session`` sets what makes measurements on a shared machine honest: a fixed number of
intra-op threads and ``session.intra_op.allow_spinning = 0`` by default, so idle worker
threads sleep instead of spinning on cores other processes need.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort
import torch

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def ort_session(
    path: Union[str, "os.PathLike[str]", bytes],
    threads: Optional[int] = None,
    spinning: bool = False,
    optimization: str = "all",
    qdq_matmulnbits_accuracy_level: Optional[int] = None,
) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` for ``path`` (or serialized model bytes).

    ``qdq_matmulnbits_accuracy_level`` sets the accuracy level ONNX Runtime uses when it
    fuses a blocked 4-bit DequantizeLinear + MatMul into MatMulNBits itself (its default
    is 4, which quantizes activations to int8); ``None`` leaves ONNX Runtime's default.
    """
    if optimization not in _LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(_LEVELS)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = _LEVELS[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if qdq_matmulnbits_accuracy_level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(qdq_matmulnbits_accuracy_level))
    source = path if isinstance(path, bytes) else os.fspath(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def feeds(session: ort.InferenceSession, inputs: Sequence[Any]) -> Dict[str, np.ndarray]:
    """Positional model inputs (tensors or arrays) as the session's named feeds."""
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"the model takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
    return {n: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            for n, x in zip(names, inputs)}


def run(session: ort.InferenceSession, inputs: Sequence[Any]) -> List[np.ndarray]:
    """Run ``session`` on positional ``inputs``; returns every output."""
    return session.run(None, feeds(session, inputs))
