"""Resolve the DATA argument into calibration batches and held-out evaluation batches.

DATA is one of:

* a bundled data set (``rotten-tomatoes``, ``hamlet``, ``news``, ``fashion-mnist``,
  ``mnist-5k``): ``samples`` texts or images for calibration and ``eval_samples`` other
  ones for the report, split with :func:`bitfold.zoo.split` (seed 0), batched by
  ``batch_size`` and turned into inputs by the bundled model's own preprocessing;
* a folder of ``.npy`` / ``.npz`` files, sorted by name, one model input per file (an
  ``.npz`` holds several inputs in the order they were saved); with four files or more
  the last quarter is held out for evaluation, with two or three the last one;
* one ``.npy`` / ``.npz`` file: a single input, used for calibration and evaluation;
* any other file: text, one example per non-empty line (for bundled text models).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from bitfold.cli.errors import CLIError
from bitfold.cli.models import ModelSource

DATA_HELP = ("a bundled data set (rotten-tomatoes, hamlet, news, fashion-mnist, mnist-5k), a folder of .npy/.npz "
             "files (one model input each), or a text file (one example per line)")


@dataclass
class CalibrationSet:
    items: List[Tuple[Any, ...]]
    evaluation: List[Tuple[Any, ...]]
    #: Whether ``evaluation`` is disjoint from ``items``.
    held_out: bool
    #: What an evaluation batch holds, for the report ("8 texts of rotten-tomatoes").
    description: str


def _batches(source: ModelSource, examples: Sequence[Any], batch_size: int, max_length: int) -> List[Tuple[Any, ...]]:
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        if source.modality == "text":
            out.append(tuple(source.preprocess(list(chunk), max_length=max_length)))
        else:
            out.append(tuple(source.preprocess(chunk)))
    return out


def _check_preprocess(source: ModelSource, what: str, modality: str, data: str) -> None:
    if source.preprocess is None:
        raise CLIError(
            f"{data} holds {what}, but {source.label} has no bundled preprocessing to turn {what} into inputs; "
            "give a folder of .npy/.npz model inputs instead"
        )
    if source.modality != modality:
        raise CLIError(f"{data} holds {what}, but {source.label} takes {source.modality} inputs")


def _from_zoo(name: str, source: ModelSource, samples: int, eval_samples: int, batch_size: int,
              max_length: int) -> CalibrationSet:
    from bitfold import zoo

    ds = zoo.load_dataset(name)
    modality = "text" if isinstance(ds.items, list) else "image"
    what = "texts" if modality == "text" else "images"
    _check_preprocess(source, what, modality, name)
    n_eval = min(eval_samples, max(len(ds) - 1, 0))
    n_calib = min(samples, len(ds) - n_eval)
    if n_calib < 1:
        raise CLIError(f"{name}: calibration data is empty")
    calib, evals = zoo.split(ds, n_calib=n_calib, seed=0, n_eval=n_eval)
    items = _batches(source, calib.items, batch_size, max_length)
    held_out = len(evals) > 0
    evaluation = _batches(source, evals.items, batch_size, max_length) if held_out else items
    per_batch = min(batch_size, len(evals) if held_out else n_calib)
    return CalibrationSet(items, evaluation, held_out, f"{per_batch} {what} of {name}")


def _load_array_file(path: Path) -> Tuple[Any, ...]:
    import numpy as np
    import torch

    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CLIError(f"{path}: not a readable .npy/.npz file ({err})") from err
    arrays = [loaded[k] for k in loaded.files] if hasattr(loaded, "files") else [loaded]
    if not arrays:
        raise CLIError(f"{path}: holds no arrays")
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _from_folder(folder: Path) -> CalibrationSet:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise CLIError(f"{folder}: no .npy or .npz files in it: calibration data is empty")
    items = [_load_array_file(p) for p in files]
    held = 0 if len(items) == 1 else max(1, len(items) // 4)
    if held:
        return CalibrationSet(items[:-held], items[-held:], True, f"arrays from {folder.name}/")
    return CalibrationSet(items, items, False, f"arrays from {folder.name}/")


def _from_text(path: Path, source: ModelSource, samples: int, eval_samples: int, batch_size: int,
               max_length: int) -> CalibrationSet:
    _check_preprocess(source, "texts", "text", str(path))
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as err:
        raise CLIError(f"{path}: not a UTF-8 text file ({err.reason})") from err
    texts = [line for line in lines if line]
    if not texts:
        raise CLIError(f"{path}: no non-empty lines: calibration data is empty")
    n_eval = min(eval_samples, len(texts) - 1)
    calib = texts[:min(samples, len(texts) - n_eval)]
    items = _batches(source, calib, batch_size, max_length)
    if n_eval < 1:
        return CalibrationSet(items, items, False, f"{min(batch_size, len(calib))} texts of {path.name}")
    evaluation = _batches(source, texts[-n_eval:], batch_size, max_length)
    return CalibrationSet(items, evaluation, True, f"{min(batch_size, n_eval)} texts of {path.name}")


def load_data(spec: str, source: ModelSource, samples: int = 64, eval_samples: int = 8, batch_size: int = 8,
              max_length: int = 128) -> CalibrationSet:
    """Calibration and evaluation batches for ``source`` from ``spec`` (see the module docstring)."""
    from bitfold import zoo

    path = Path(spec)
    if spec.strip().lower() in zoo.list_datasets() and not path.exists():
        return _from_zoo(spec.strip().lower(), source, samples, eval_samples, batch_size, max_length)
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        if path.suffix in (".npy", ".npz"):
            item = _load_array_file(path)
            return CalibrationSet([item], [item], False, f"arrays from {path.name}")
        return _from_text(path, source, samples, eval_samples, batch_size, max_length)
    raise CLIError(f"{spec}: no such file, folder or bundled data set; expected {DATA_HELP}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--samples``, ``--eval-samples``, ``--batch-size``, ``--max-length`` (for bundled data and text files)."""
    parser.add_argument("--samples", type=positive_int, default=64,
                        help="texts/images of a bundled data set or text file used for calibration (default 64)")
    parser.add_argument("--eval-samples", type=positive_int, default=8,
                        help="other texts/images held out for the per-layer analysis (default 8)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="texts/images per model input (default 8)")
    parser.add_argument("--max-length", type=positive_int, default=128, help="tokens per text at most (default 128)")


def data_from_args(spec: str, source: ModelSource, args: argparse.Namespace) -> CalibrationSet:
    return load_data(spec, source, args.samples, args.eval_samples, args.batch_size, args.max_length)
