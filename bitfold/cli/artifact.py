"""What the CLI keeps next to a saved quantized model, and how it reads an OUT_DIR back.

Besides the artifact :meth:`bitfold.QuantizedModel.save` writes (``graph.json``,
``tensors.safetensors``), ``bitfold quantize`` stores ``analysis.json`` (the per-layer
report data) and ``example_inputs.safetensors``: one evaluation batch, which ``export`` and
``compile`` use for input shapes and to check the backend against the PyTorch simulation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple

from bitfold.cli.errors import CLIError

EXAMPLE_FILE = "example_inputs.safetensors"


def load_quantized(directory: str):
    """The :class:`~bitfold.QuantizedModel` saved in ``directory``, or a clear error."""
    from bitfold.api import QuantizedModel

    path = Path(directory)
    if not path.exists():
        raise CLIError(f"{directory}: no such directory")
    if not path.is_dir():
        raise CLIError(f"{directory}: not a directory; give the OUT_DIR of `bitfold quantize`")
    if not (path / "graph.json").is_file():
        raise CLIError(f"{directory}: not a quantized model (no graph.json); give the OUT_DIR of `bitfold quantize`")
    return QuantizedModel.load(path)


def backend_inputs(directory: str, output: str, overwrite: bool) -> Tuple[Any, Path, Optional[Tuple[Any, ...]]]:
    """For ``export`` / ``compile``: the quantized model, the output path (refused if it exists
    without ``overwrite``), and the saved example input (``None`` if there is none)."""
    q = load_quantized(directory)
    out = Path(output)
    if out.exists() and not overwrite:
        raise CLIError(f"{out}: exists; pass --overwrite to replace it")
    return q, out, load_example(directory)


def save_example(directory: str, item: Tuple[Any, ...]) -> None:
    """Store the tensors of one model input as ``input_0``, ``input_1``, … (atomically)."""
    import torch
    from safetensors.torch import save_file

    from bitfold.api.report.analysis import default_file_mode

    tensors = {f"input_{i}": x.detach().contiguous().cpu() for i, x in enumerate(item) if isinstance(x, torch.Tensor)}
    if len(tensors) != len(item):
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{EXAMPLE_FILE}.tmp-", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, os.path.join(directory, EXAMPLE_FILE))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_example(directory: str) -> Optional[Tuple[Any, ...]]:
    """The model input saved by :func:`save_example`, or ``None`` when there is none."""
    from safetensors.torch import load_file

    path = os.path.join(directory, EXAMPLE_FILE)
    if not os.path.isfile(path):
        return None
    tensors = load_file(path)
    return tuple(tensors[f"input_{i}"] for i in range(len(tensors)))
