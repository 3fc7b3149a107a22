"""A compiled graph: call it on numpy arrays or torch tensors, export it as a shared library.

``export(directory)`` writes three files, atomically (a temporary directory renamed into place):

* ``model.so`` — the Relax VM executable and its kernels (depends only on libc/libm and the
  TVM runtime);
* ``params.bin`` — the weights, in TVM's parameter-dictionary format, keyed ``p0``, ``p1``… in
  the order ``main`` takes them after the user inputs;
* ``model.json`` — the signature: target, input names/dtypes/shapes (names for dynamic
  sizes), the number of parameters and of outputs.

A process that has only TVM loads it like this (no torch, no bitfold)::

    import json, tvm
    from tvm import relax
    meta = json.load(open(f"{d}/model.json"))
    vm = relax.VirtualMachine(tvm.runtime.load_module(f"{d}/model.so"), tvm.cpu())
    params = tvm.runtime.load_param_dict_from_file(f"{d}/params.bin")
    out = vm["main"](*inputs, *[params[f"p{i}"] for i in range(meta["num_params"])])

For a CUDA export, add ``import tvm.support.nvcc`` (TVM compiles the embedded CUDA C when the
module first loads; see :func:`prepare_cuda_runtime`) and run on ``tvm.cuda()``.
:meth:`CompiledModel.load` does all of this and wraps the result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import tvm
from tvm import relax

from bitfold.backends.tvm.signature import InputSpec
from bitfold.backends.tvm.target import device_for, is_gpu, resolve_target

LIBRARY, PARAMS, SIGNATURE = "model.so", "params.bin", "model.json"
FORMAT_VERSION = 1


class CompiledModel:
    """A TVM-compiled graph and its weights.

    The device (and the Relax VM on it) is only touched when the model first runs, so a
    model cross-compiled for CUDA on a machine without a GPU can still be exported.
    """

    def __init__(
        self,
        executable: Any,
        target: tvm.target.Target,
        inputs: Sequence[InputSpec],
        params: Sequence[Any],
        output_count: int,
        param_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.executable = executable
        self.target = target
        self.inputs = list(inputs)
        self.output_count = output_count
        self.param_names = list(param_names) if param_names is not None else [f"p{i}" for i in range(len(params))]
        self.device = device_for(target)
        self._host_params = list(params)
        self._vm: Optional[relax.VirtualMachine] = None
        self._device_params: Optional[List[tvm.runtime.Tensor]] = None

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.inputs)
        return f"<CompiledModel for {self.target.kind.name} ({sig}), {len(self._host_params)} params>"

    @property
    def vm(self) -> relax.VirtualMachine:
        """The Relax VM on :attr:`device` (created on first use)."""
        if self._vm is None:
            if is_gpu(self.target):
                prepare_cuda_runtime()
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    @property
    def params(self) -> List[tvm.runtime.Tensor]:
        """The weights on :attr:`device`, in the order ``main`` takes them (uploaded on first use)."""
        if self._device_params is None:
            self._device_params = [_on_device(p, self.device) for p in self._host_params]
            if not is_gpu(self.target):  # host memory already: keep one copy of the weights
                self._host_params = list(self._device_params)
        return self._device_params

    # ------------------------------------------------------------------ running

    def device_inputs(self, *values: Any) -> List[tvm.runtime.Tensor]:
        """``values`` (numpy arrays or torch tensors) checked against :attr:`inputs` and placed on
        the device: what ``vm["main"](*inputs, *params)`` takes (for timing loops)."""
        if len(values) != len(self.inputs):
            raise TypeError(f"the compiled model takes {len(self.inputs)} inputs "
                            f"({', '.join(s.name for s in self.inputs)}), got {len(values)}")
        sizes: Dict[str, int] = {}
        arrays = []
        for spec, value in zip(self.inputs, values):
            array = _as_numpy(value)
            problem = spec.accepts(array.shape, sizes)
            if problem is not None:
                raise ValueError(problem)
            if str(array.dtype) != spec.dtype:
                raise TypeError(f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}")
            arrays.append(tvm.runtime.tensor(np.ascontiguousarray(array), self.device))
        return arrays

    def run(self, *inputs: Any) -> Union[np.ndarray, tuple]:
        """Run on numpy arrays or torch tensors; return numpy array(s)."""
        result = self.vm["main"](*self.device_inputs(*inputs), *self.params)
        if isinstance(result, tvm.runtime.Tensor):
            return result.numpy()
        return tuple(r.numpy() for r in result)

    def __call__(self, *inputs: Any) -> Any:
        """Like :meth:`run`, but torch tensors in give torch tensors out."""
        out = self.run(*inputs)
        if not any(_is_torch(x) for x in inputs):
            return out
        import torch

        return torch.from_numpy(out) if isinstance(out, np.ndarray) else tuple(torch.from_numpy(o) for o in out)

    def time_evaluator(self, *inputs: Any, number: int = 10, repeat: int = 1) -> Any:
        """TVM's timer around ``main`` (inputs already on the device; no conversion in the loop)."""
        args = self.device_inputs(*inputs) + list(self.params)
        return self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)(*args)

    # ------------------------------------------------------------------ export / load

    def signature(self) -> Dict[str, Any]:
        return {
            "format": "bitfold-tvm",
            "version": FORMAT_VERSION,
            "target": _plain(self.target.export()),
            "inputs": [s.describe() for s in self.inputs],
            "num_params": len(self._host_params),
            "param_sources": self.param_names,
            "outputs": self.output_count,
        }

    def export(self, directory: Union[str, os.PathLike], overwrite: bool = False) -> Path:
        """Write ``model.so``, ``params.bin`` and ``model.json`` into ``directory`` (see module docstring)."""
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            self.executable.export_library(str(tmp / LIBRARY))
            host = {f"p{i}": _on_device(p, tvm.cpu(0)) for i, p in enumerate(self._host_params)}
            tvm.runtime.save_param_dict_to_file(host, str(tmp / PARAMS))
            (tmp / SIGNATURE).write_text(json.dumps(self.signature(), indent=2) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.rename(tmp, directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "CompiledModel":
        """Load a directory written by :meth:`export`."""
        directory = Path(directory)
        meta_path = directory / SIGNATURE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} has no {SIGNATURE}: not a bitfold TVM export")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "bitfold-tvm" or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: unsupported export format {meta.get('format')} v{meta.get('version')}")
        target = resolve_target(meta["target"])
        if is_gpu(target) and not device_for(target).exist:
            # TVM registers its CUDA module loader only where a CUDA driver is present; without
            # this check the load fails with "loader of that name is not registered".
            raise RuntimeError(f"{directory / LIBRARY} was compiled for {target.kind.name} "
                               f"({target.attrs.get('arch', 'no arch')}): loading it needs a CUDA device, "
                               f"and this machine has none (export for 'llvm' to run on the CPU)")
        library = tvm.runtime.load_module(str(directory / LIBRARY))
        table = tvm.runtime.load_param_dict_from_file(str(directory / PARAMS))
        params = [table[f"p{i}"] for i in range(meta["num_params"])]
        inputs = [InputSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in meta["inputs"]]
        return cls(library, target, inputs, params, meta["outputs"], meta.get("param_sources"))


def prepare_cuda_runtime() -> None:
    """Let this process load bitfold's CUDA kernels, and compile them without fast math.

    TVM 0.27 keeps the kernels as CUDA C and compiles them when they are first loaded, through
    the ``tvm_callback_cuda_compile`` hook that :mod:`tvm.support.nvcc` registers (nvcc with
    ``TVM_CUDA_COMPILE_MODE=nvcc``, else NVRTC). Its nvcc default ``--use_fast_math`` makes
    ``x / s`` approximate and flushes subnormals, which breaks fake-quantize's exactness, so
    ``TVM_CUDA_NVCC_NO_FAST_MATH`` is set unless the user chose otherwise. A process with
    only TVM does the same by hand (see the module docstring).
    """
    import tvm.support.nvcc  # noqa: F401  (registers the compile hook)

    os.environ.setdefault("TVM_CUDA_NVCC_NO_FAST_MATH", "1")


def _plain(value: Any) -> Any:
    """TVM containers (``Map``, ``Array``) → JSON-ready dicts and lists."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]


def _on_device(value: Any, device: "tvm.runtime.Device") -> tvm.runtime.Tensor:
    """A numpy array or TVM tensor as a TVM tensor on ``device`` (copied only if needed)."""
    if isinstance(value, tvm.runtime.Tensor):
        if value.device == device:
            return value
        return value.copyto(device)
    return tvm.runtime.tensor(np.ascontiguousarray(value), device)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def _as_numpy(value: Any) -> np.ndarray:
    if _is_torch(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)
