"""Real models compiled end to end agree with PyTorch (fp32) and with bitfold's simulation
of the same quantized graph (INT4/INT4 and W4A16 recipes).

For fp32 graphs the compiled module differs only by float reassociation (≤ 1e-4 relative).
A quantized graph re-rounds activations, so a value that lands on a rounding boundary can
move by one quantization step: the checks there are the predictions (top-1 token, the
embedding's largest component) and the embeddings' cosine similarity.
"""

import pytest
import torch

import bitfold
from bitfold.backends.tvm import compile

from .conftest import truncated

pytestmark = pytest.mark.slow


def _relative(got, want):
    return float((got - want).abs().max() / want.abs().max())


def test_minilm_fp32_matches_pytorch(minilm, minilm_graph, sentences):
    cm = compile(minilm_graph, "llvm -mcpu=native")
    assert all(isinstance(d, str) for spec in cm.inputs for d in spec.shape)  # batch and sequence
    for batch in (sentences[1][:8], sentences[1][8:9]):
        inputs = minilm.preprocess(batch)
        assert _relative(cm(*inputs), minilm(*inputs)) <= 1e-4


def test_quantized_minilm_matches_the_simulation(minilm_w4a4, sentences):
    lm, quantized = minilm_w4a4
    kinds = {str(n.target) for n in quantized.graph_module.graph.nodes if n.op == "call_function"}
    assert {"bitfold.fake_quantize.default", "bitfold.quantized_linear.default"} <= kinds
    cm = compile(quantized, "llvm -mcpu=native")
    inputs = lm.preprocess(sentences[1])
    got, want = cm(*inputs), quantized(*inputs)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) >= 0.999


def test_smollm2_w4a16_matches_the_simulation(sentences):
    """SmolLM2's kernel kinds (RMSNorm, rotary embeddings, SiLU-gated MLP, causal mask) with
    INT4 weight-only linears; their fp32 lowering is the same graph minus the low-bit kernels."""
    lm = truncated("smollm2", 1)
    inputs = lm.preprocess(sentences[1][:6])
    # Items of different lengths: bitfold.quantize keeps the sequence dynamic only if it varies.
    calibration = [lm.preprocess(sentences[0][i:i + 2]) for i in (0, 2)]
    assert calibration[0][0].shape[1] != calibration[1][0].shape[1]
    quantized = bitfold.quantize(lm.module, "w4a16-int-g128", calibration, progress=False)
    got, want = compile(quantized, "llvm -mcpu=native")(*inputs), quantized(*inputs)
    valid = inputs[1].bool()
    assert torch.equal(got.argmax(-1)[valid], want.argmax(-1)[valid])
    assert _relative(got, want) <= 1e-4  # weight-only: no activation rounding to flip
