"""Models exported by torch.onnx.export (TorchScript exporter, dynamic axes), imported and
compared with ONNX Runtime at two batch/sequence sizes, plus the canonical-form contract."""

import numpy as np
import pytest
import torch

from bitfold.ir.onnx_import import from_onnx
from tests.ir.onnx_import.exported_models import Encoder, LlamaBlock, export, small_cnn
from tests.ir.onnx_import.harness import assert_canonical, assert_close, run_fx, run_ort, targets

aten = torch.ops.aten
SIZES = ((2, 5), (3, 11))
SEQ_AXES = {0: "batch", 1: "sequence"}


def _compare_at_sizes(model, gm, make_feeds):
    for sizes in SIZES:
        feeds = make_feeds(np.random.default_rng(sum(sizes)), *sizes)
        assert_close(run_fx(gm, feeds), run_ort(model, feeds))


@pytest.mark.parametrize("opset", [14, 17])
def test_encoder_block(opset):
    torch.manual_seed(0)
    model = export(Encoder(), (torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)), ["ids", "mask"],
                   {"ids": SEQ_AXES, "mask": SEQ_AXES, "out": SEQ_AXES}, opset)
    gm = from_onnx(model)
    assert_canonical(gm)

    def feeds(rng, b, t):
        mask = (rng.random((b, t)) > 0.3).astype(np.int64)
        mask[:, 0] = 1
        return {"ids": rng.integers(0, 50, (b, t)), "mask": mask}

    _compare_at_sizes(model, gm, feeds)
    ops = targets(gm)
    assert ops.count(aten.embedding.default) == 2
    assert (aten.layer_norm.default in ops) == (opset >= 17)  # opset 14 exports LayerNorm decomposed
    assert aten.linear.default not in ops  # MatMul + Add stays literal
    assert not gm.graph.find_nodes(op="call_function", target=aten.item.default)
    assert gm.meta["onnx_inputs"] == ["ids", "mask"] and gm.meta["onnx_outputs"] == ["out"]
    assert {"emb_weight": "emb.weight", "qkv_bias": "qkv.bias"}.items() <= gm.meta["onnx_initializers"].items()


@pytest.mark.parametrize("opset", [14, 18])
def test_llama_block(opset):
    torch.manual_seed(0)
    model = export(LlamaBlock(), (torch.randn(2, 5, 32),), ["x"], {"x": SEQ_AXES, "out": SEQ_AXES}, opset)
    gm = from_onnx(model)
    assert_canonical(gm)
    _compare_at_sizes(model, gm, lambda rng, b, t: {"x": rng.standard_normal((b, t, 32)).astype(np.float32)})
    sizes = [n for n in gm.graph.find_nodes(op="call_function", target=aten.sym_size.int)]
    assert {n.args[0].op for n in sizes} <= {"placeholder", "call_function"}
    assert sizes[0].args[0].op == "placeholder"


@pytest.mark.parametrize("fold", [True, False])
def test_cnn(fold):
    """With constant folding the exporter fuses BN into the conv; without, BatchNormalization stays."""
    torch.manual_seed(0)
    model = export(small_cnn(), (torch.randn(2, 3, 16, 16),), ["image"],
                   {"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n"}}, 17, fold=fold)
    gm = from_onnx(model)
    assert_canonical(gm)
    _compare_at_sizes(model, gm,
                      lambda rng, n, s: {"image": rng.standard_normal((n, 3, 2 * s + 2, 2 * s)).astype(np.float32)})
    ops = targets(gm)
    assert ops.count(aten.conv2d.default) == 3 and aten.adaptive_avg_pool2d.default in ops
    assert aten.linear.default in ops and aten.max_pool2d.default in ops
    assert ops.count(aten.batch_norm.default) == (0 if fold else 2)
    params = dict(gm.named_parameters())
    assert all(not p.requires_grad for p in params.values())


def test_meta_values_are_symbolic():
    torch.manual_seed(0)
    model = export(Encoder(), (torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)), ["ids", "mask"],
                   {"ids": SEQ_AXES, "mask": SEQ_AXES}, 17)
    gm = from_onnx(model)
    ids, mask = gm.graph.find_nodes(op="placeholder")
    assert ids.meta["val"].shape == mask.meta["val"].shape  # one symbol per dim_param name
    out = gm.graph.output_node().args[0][0]
    batch, seq, width = out.meta["val"].shape
    assert isinstance(batch, torch.SymInt) and isinstance(seq, torch.SymInt) and width == 32
    assert all("val" in n.meta for n in gm.graph.nodes if n.op != "output")
