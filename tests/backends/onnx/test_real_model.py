"""A real pretrained model end to end: MiniLM (its first encoder block) on real sentences.

The full models (MiniLM, SmolLM2, EfficientNet-Lite0 under four recipes) are measured by
``benchmarks/onnx_latency.py`` and ``examples/export_efficientnet_onnx.py``; exporting them takes
minutes, so the test suite runs one real block with its real weights, tokenizer and data.
"""

import pytest

import bitfold
from bitfold import zoo
from bitfold.backends.onnx import export_onnx, ort_session, read_metadata
from bitfold.backends.onnx.agreement import agreement
from bitfold.backends.onnx.runtime import run


@pytest.mark.slow
def test_minilm_block_exports_and_matches_the_simulation(tmp_path):
    minilm = zoo.load_model("minilm")
    encoder = minilm.module.encoder.encoder
    encoder.layer = encoder.layer[:1]
    texts = list(zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=24, seed=0)[0].items)
    calibration = [minilm.preprocess(texts[i:i + 4], max_length=48) for i in range(0, 8, 4)]
    q = bitfold.quantize(minilm.module, "w4a4-fp-minmax", calibration, progress=False)
    path = export_onnx(q, tmp_path / "minilm.onnx", calibration[0])
    evaluation = minilm.preprocess(texts[8:24], max_length=64)
    result = agreement(run(ort_session(path), evaluation)[0], q(*evaluation))
    assert result.max_rel < 1e-4, result
    meta = read_metadata(path)
    assert meta["recipe"]["name"] == "w4a4-fp-minmax" and meta["dynamic_axes"]["input_ids"] == {"0": "batch",
                                                                                                "1": "sequence"}
    assert sum(layer.get("format") == "e2m1" for layer in meta["layers"].values()) == 4  # Q/K/V, O, up, down inputs
