"""all-MiniLM-L6-v2 on Rotten Tomatoes snippets: embedding cosine vs FP32 and a sentiment probe.

The 4,866 snippets (three exact duplicates dropped, so no text is on both sides of a split)
are split once with :func:`bitfold.zoo.split`: ``n_calib`` for calibration (the paper's 128
for BERT-like models), ``n_test`` held out, the rest to train the probe. Metrics on the
held-out snippets:

* mean and min cosine between the quantized and the FP32 sentence embeddings;
* the accuracy of a logistic-regression probe fit on the FP32 embeddings of the training
  snippets (:mod:`.probe`), applied to the quantized embeddings of the held-out ones: how much
  of the sentiment a downstream classifier trained on the float model still reads.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from bitfold import zoo

from .probe import fit_probe
from .task import Metric, Task, assert_disjoint, batches

CALIB_BATCH = 16
EVAL_BATCH = 64


def _unique(ds: zoo.Dataset) -> zoo.Dataset:
    first = {}
    for i, text in enumerate(ds.items):
        first.setdefault(text, i)
    return ds.subset(sorted(first.values()))


def build(n_calib: int = 128, n_test: int = 1000, seed: int = 0) -> Task:
    model = zoo.load_model("minilm")
    full = zoo.load_dataset("rotten-tomatoes")
    data = _unique(full)
    calib, rest = zoo.split(data, n_calib=n_calib, seed=seed)
    train, test = zoo.split(rest, n_calib=len(rest) - n_test, seed=seed + 1, n_eval=n_test)
    assert_disjoint("minilm calibration vs held-out snippets", calib.items, test.items)
    assert_disjoint("minilm probe training vs held-out snippets", train.items, test.items)

    def embed(run: Callable[..., torch.Tensor], texts) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([run(*model.preprocess(list(b))) for b in batches(texts, EVAL_BATCH)])

    reference = embed(model.module, test.items)
    probe = fit_probe(embed(model.module, train.items), torch.from_numpy(train.labels), seed=seed)
    test_labels = torch.from_numpy(test.labels)

    def evaluate(run: Callable[..., torch.Tensor]) -> Dict[str, float]:
        out = embed(run, test.items)
        cos = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
        return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                "probe_accuracy": probe.accuracy(out, test_labels)}

    settings = {
        "model": model.source, "data": full.source, "snippets": len(full), "unique_snippets": len(data),
        "calibration_snippets": len(calib), "calibration_batch": CALIB_BATCH, "probe_train_snippets": len(train),
        "held_out_snippets": len(test), "split_seed": seed, "probe_C": probe.C,
    }
    notes = [f"{len(calib)} calibration snippets; cosine and probe on {len(test)} held-out snippets; probe: "
             f"logistic regression (C={probe.C:g} by 5-fold CV) on FP32 embeddings of {len(train)} other snippets"]
    return Task(
        name="minilm", module=model.module,
        calibration=[model.preprocess(list(b)) for b in batches(calib.items, CALIB_BATCH)],
        evaluate=evaluate,
        metrics=(Metric("mean_cosine", "cos mean", 4), Metric("min_cosine", "cos min", 4),
                 Metric("probe_accuracy", "probe acc", 4)),
        settings=settings, notes=notes,
    )
