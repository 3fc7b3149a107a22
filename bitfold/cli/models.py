"""Resolve the MODEL argument: an ONNX file, a bundled model name, or ``module:factory``.

``module:factory`` names a Python module (dotted, importable; or a ``.py`` file) and a
function in it that takes no arguments and returns an ``nn.Module``, or a tuple
``(module, example_inputs)``; the example inputs are only needed where no calibration data
is given (``bitfold inspect``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from bitfold.cli.errors import CLIError

MODEL_HELP = ("an .onnx file, a bundled model (minilm, smollm2, efficientnet-lite0) or module:factory "
              "(a function returning an nn.Module, or (module, example_inputs))")


@dataclass
class ModelSource:
    """A model ready for :func:`bitfold.quantize`, with what the CLI knows about its inputs."""

    spec: str
    #: What reports call it: the bundled name, the ONNX file name, or ``module:factory``.
    label: str
    #: An ``nn.Module`` or the path of an ONNX file.
    model: Any
    #: Raw data (texts or uint8 images) to model inputs; ``None`` when unknown.
    preprocess: Optional[Callable[..., Tuple[Any, ...]]] = None
    #: ``"text"`` or ``"image"`` for bundled models, else ``None``.
    modality: Optional[str] = None
    example_inputs: Optional[Tuple[Any, ...]] = None

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, str)


def _import_module(name: str):
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise CLIError(f"{name}: no such Python file")
        module_name = f"bitfold_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise CLIError(f"{name}: importing it failed: {type(err).__name__}: {err}") from err
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise CLIError(f"cannot import module {name!r} ({err}); is it on PYTHONPATH?") from err
    except Exception as err:
        raise CLIError(f"importing {name!r} failed: {type(err).__name__}: {err}") from err


def _from_factory(spec: str) -> ModelSource:
    import torch

    module_name, _, attr = spec.rpartition(":")
    module = _import_module(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CLIError(f"{spec}: {module_name} has no function {attr!r}")
    try:
        made = factory()
    except Exception as err:
        raise CLIError(f"{spec}: the factory raised {type(err).__name__}: {err}") from err
    example = None
    if isinstance(made, tuple) and len(made) == 2:
        made, example = made
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(made, torch.nn.Module):
        raise CLIError(f"{spec}: the factory returned a {type(made).__name__}, not a torch.nn.Module")
    return ModelSource(spec, spec, made.eval(), example_inputs=example)


def resolve_model(spec: str) -> ModelSource:
    """The model ``spec`` names (see the module docstring); a :class:`CLIError` saying what
    was expected otherwise."""
    from bitfold import zoo

    path = Path(spec)
    if spec.lower().endswith(".onnx"):
        if not path.is_file():
            raise CLIError(f"{spec}: no such ONNX file")
        return ModelSource(spec, path.name, str(path))
    if spec.strip().lower() in zoo.list_models():
        loaded = zoo.load_model(spec)
        modality = "text" if loaded.tokenizer is not None else "image"
        return ModelSource(spec, loaded.name, loaded.module, loaded.preprocess, modality, loaded.example_inputs())
    if ":" in spec and not path.exists():
        return _from_factory(spec)
    if path.exists():
        raise CLIError(f"{spec}: not a model bitfold reads; expected {MODEL_HELP}")
    raise CLIError(f"unknown model {spec!r}; expected {MODEL_HELP}")
