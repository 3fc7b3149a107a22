"""save_graph / load_graph: bit-identical round trips, a safe loader, atomic writes."""

import collections
import json
import math
import operator
import os
import pickle

import pytest
import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from bitfold.ir import from_onnx, from_torch, ops
from bitfold.ir.serialize import GRAPH_FILE, TENSORS_FILE, GraphFormatError, load_graph, read_extra_meta, save_graph

aten = torch.ops.aten


class Block(nn.Module):
    """Embedding + pre-norm attention + GELU MLP, with a tied head and odd buffers."""

    def __init__(self, vocab=16, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied: one tensor under two names
        self.register_buffer("pos", torch.randn(dim, 6).t())  # non-contiguous
        self.register_buffer("gain", torch.full((dim,), 0.75), persistent=False)

    def forward(self, ids, mask):
        b, t = ids.shape
        x = self.emb(ids) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(y)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x)))) * self.gain
        return self.head(x)


def _inputs(b=2, t=5):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 16, (b, t), generator=gen), torch.randn(b, 1, t, t, generator=gen)


def _call_targets(gm):
    return [(n.name, n.op, n.target) for n in gm.graph.nodes]


def test_transformer_block_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    ids, mask = _inputs()
    gm = from_torch(Block(), (ids,), example_kwargs={"mask": mask})
    gm.meta["note"] = {"layers": [1, 2]}
    gm.meta["not_json"] = object()
    save_graph(gm, tmp_path / "art", extra_meta={"recipe": "w4a8-fp", "scales": [0.5, 1e-30]})
    assert sorted(os.listdir(tmp_path)) == ["art"]  # no temp directory left behind
    assert sorted(os.listdir(tmp_path / "art")) == [GRAPH_FILE, TENSORS_FILE]

    loaded = load_graph(tmp_path / "art")
    expected = gm(ids, mask=mask)
    got = loaded(ids, mask=mask)  # the pytree signature (keyword input, single tensor out) is kept
    assert isinstance(got, torch.Tensor) and torch.equal(got, expected)
    other_ids, other_mask = _inputs(2, 5)
    assert torch.equal(loaded(other_ids, mask=other_mask + 1), gm(other_ids, mask=other_mask + 1))

    assert _call_targets(loaded) == _call_targets(gm)
    targets = {n.target for n in loaded.graph.nodes if n.op == "call_function"}
    assert {aten.embedding.default, aten.layer_norm.default, aten.linear.default, aten.softmax.int,
            aten.gelu.default, aten.transpose.int} <= targets
    # Parameters vs buffers, tying, persistence, requires_grad.
    params = dict(loaded.named_parameters(remove_duplicate=False))
    assert set(params) == set(dict(gm.named_parameters(remove_duplicate=False)))
    assert all(isinstance(p, nn.Parameter) and not p.requires_grad for p in params.values())
    assert loaded.emb.weight is loaded.head.weight
    assert set(dict(loaded.named_buffers())) == {"pos", "gain"}
    assert "gain" in loaded._non_persistent_buffers_set and "pos" not in loaded._non_persistent_buffers_set
    assert torch.equal(loaded.pos, gm.pos) and loaded.pos.is_contiguous()
    # Metadata.
    assert loaded.meta["bitfold_source"] == "torch" and loaded.meta["note"] == {"layers": [1, 2]}
    assert "not_json" not in loaded.meta
    assert loaded.meta["bitfold_extra_meta"] == {"recipe": "w4a8-fp", "scales": [0.5, 1e-30]}
    assert read_extra_meta(tmp_path / "art") == {"recipe": "w4a8-fp", "scales": [0.5, 1e-30]}

    # A loaded graph saves again to the same bytes.
    save_graph(loaded, tmp_path / "again")
    a = json.loads((tmp_path / "art" / GRAPH_FILE).read_text())
    b = json.loads((tmp_path / "again" / GRAPH_FILE).read_text())
    assert a["nodes"] == b["nodes"] and a["tensors"] == b["tensors"] and a["signature"] == b["signature"]


class QuantizedMLP(nn.Module):
    """A hand-quantized model: packed 4-bit weights, a fake-quantized activation."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(12, 32, generator=gen)
        scale = w.abs().amax(1) / 6.0
        pw = ops.pack_weight(w, "e2m1", scale)
        self.register_buffer("packed", pw.packed)
        self.register_buffer("w_scale", pw.scale)
        self.register_buffer("shift", torch.randint(-2, 3, (32,), generator=gen, dtype=torch.int32))
        self.bias = nn.Parameter(torch.randn(12, generator=gen))
        self.register_buffer("a_scale", torch.tensor(0.05))

    def forward(self, x):
        x = torch.ops.bitfold.fake_quantize(x, "int8", self.a_scale, None, None, None)
        y = torch.ops.bitfold.quantized_linear(x, self.packed, "e2m1", 12, 32, self.w_scale, None, None,
                                               self.shift, self.bias)
        return torch.relu(y), x.amax(dim=-1, keepdim=True)


def test_graph_with_bitfold_ops_round_trips(tmp_path):
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(2))
    gm = from_torch(QuantizedMLP(), (x,))
    qlin = next(n for n in gm.graph.nodes if n.target is torch.ops.bitfold.quantized_linear.default)
    qlin.meta["bitfold_why"] = ["kept: already quantized"]
    qlin.meta["bitfold_input_norm"] = "layer_norm"
    qlin.meta["bitfold_quant"] = object()  # not saved

    save_graph(gm, tmp_path / "q")
    text = (tmp_path / "q" / GRAPH_FILE).read_text()
    assert '"bitfold::quantized_linear.default"' in text and '"bitfold::fake_quantize.default"' in text
    loaded = load_graph(tmp_path / "q")

    targets = [n.target for n in loaded.graph.nodes if n.op == "call_function"]
    assert torch.ops.bitfold.quantized_linear.default in targets and torch.ops.bitfold.fake_quantize.default in targets
    lq = next(n for n in loaded.graph.nodes if n.name == qlin.name)
    assert lq.meta == {"bitfold_why": ["kept: already quantized"], "bitfold_input_norm": "layer_norm"}
    assert loaded.packed.dtype == gm.packed.dtype and torch.equal(loaded.packed, gm.packed)
    assert loaded.shift.dtype == torch.int32
    for a, b in zip(gm(x), loaded(x)):
        assert torch.equal(a, b)


class OnnxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        y = self.norm(self.fc(x))
        return y.reshape(x.shape[0] * x.shape[1], 3, 2).softmax(-1), y.transpose(0, 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_graph_round_trips_at_another_batch_size(tmp_path):
    path = tmp_path / "net.onnx"
    torch.onnx.export(OnnxNet(), (torch.randn(3, 4, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    gm = from_onnx(str(path))
    ops_used = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert aten.sym_size.int in ops_used and operator.mul in ops_used

    save_graph(gm, tmp_path / "art")
    assert '"operator.mul"' in (tmp_path / "art" / GRAPH_FILE).read_text()
    loaded = load_graph(tmp_path / "art")
    assert _call_targets(loaded) == _call_targets(gm)
    assert loaded.meta["bitfold_source"] == "onnx" and loaded.meta["onnx_initializers"] == gm.meta["onnx_initializers"]
    x = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(3))  # exported at batch 3
    got, expected = loaded(x), gm(x)
    assert isinstance(got, tuple) and len(got) == 2
    assert got[0].shape == (20, 3, 2)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_every_argument_type_round_trips(tmp_path):
    graph = fx.Graph()
    x = graph.placeholder("x")
    full = graph.call_function(aten.full.default, ([2, 3], 1e300),
                               {"dtype": torch.float64, "layout": torch.strided, "device": torch.device("cpu")})
    clamped = graph.call_function(aten.clamp.default, (x, -math.inf, 0.1 + 0.2))
    big = graph.call_function(aten.add.Tensor, (x, math.inf))
    nan = graph.call_function(aten.full_like.default, (x, float("nan")), {"memory_format": torch.contiguous_format})
    neg0 = graph.call_function(aten.mul.Tensor, (x, -0.0))
    part = graph.call_function(operator.getitem, (x, (slice(None, 2), Ellipsis, slice(1, None, 2))))
    sizes = graph.call_function(aten.sym_size.int, (x, 0))
    double = graph.call_function(operator.floordiv, (graph.call_function(operator.mul, (sizes, 4)), 2))
    flat = graph.call_function(aten.reshape.default, (x, [double, -1]))
    viewed = graph.call_function(aten.view.default, (x, torch.Size([4, 12])))
    graph.output({"full": full, "pair": (clamped, [nan, neg0]), "big": big, "part": part, "flat": flat, "n": double,
                  "viewed": viewed})
    gm = fx.GraphModule(nn.Module(), graph)

    save_graph(gm, tmp_path / "g")
    loaded = load_graph(tmp_path / "g")
    t = torch.randn(4, 3, 4)
    a, b = gm(t), loaded(t)  # a flat graph stays flat: positional in, the output's structure out
    assert a.keys() == b.keys() and a["n"] == b["n"] == 8
    assert torch.equal(a["full"], b["full"]) and b["full"].dtype == torch.float64 and b["full"][0, 0] == 1e300
    assert torch.equal(a["big"], b["big"]) and torch.isinf(b["big"]).all()
    assert torch.equal(a["part"], b["part"]) and torch.equal(a["flat"], b["flat"])
    assert torch.equal(a["pair"][0], b["pair"][0]) and isinstance(b["pair"][1], list)
    assert torch.isnan(b["pair"][1][0]).all()
    assert torch.equal(torch.signbit(a["pair"][1][1]), torch.signbit(b["pair"][1][1]))
    assert torch.equal(a["viewed"], b["viewed"])
    node = next(n for n in loaded.graph.nodes if n.target is aten.mul.Tensor)
    assert math.copysign(1.0, node.args[1]) == -1.0


def test_namedtuple_output_falls_back_to_a_flat_signature_with_a_warning(tmp_path):
    Out = collections.namedtuple("Out", "a b")

    class Net(nn.Module):
        def forward(self, x):
            return Out(x + 1, x * 2)

    x = torch.randn(2, 3)
    gm = from_torch(Net(), (x,))
    with pytest.warns(UserWarning, match="output spec not saved"):
        save_graph(gm, tmp_path / "g")
    loaded = load_graph(tmp_path / "g")
    got = loaded(x)
    assert isinstance(got, tuple) and not hasattr(got, "_fields")
    assert torch.equal(got[0], gm(x).a) and torch.equal(got[1], gm(x).b)
    notes = json.loads((tmp_path / "g" / GRAPH_FILE).read_text())["signature"]["notes"]
    assert notes and "output spec" in notes[0]


class Pair:
    def __init__(self, first, second):
        self.first, self.second = first, second


pytree.register_pytree_node(
    Pair, lambda p: ([p.first, p.second], ["first", "second"]), lambda values, context: Pair(*values),
    serialized_type_name="tests.ir.test_serialize.Pair",
)


def test_registered_output_type_is_rebuilt_by_name_not_imported(tmp_path):
    class Net(nn.Module):
        def forward(self, x):
            return Pair(x + 1, {"twice": x * 2})

    x = torch.randn(2, 3)
    gm = from_torch(Net(), (x,))
    save_graph(gm, tmp_path / "g")
    got = load_graph(tmp_path / "g")(x)
    assert isinstance(got, Pair) and torch.equal(got.first, x + 1) and torch.equal(got.second["twice"], x * 2)

    def unknown(document):
        assert document["signature"]["out_spec"]["name"] == "tests.ir.test_serialize.Pair"
        document["signature"]["out_spec"]["name"] = "os.system"

    _edit_graph_json(tmp_path / "g", unknown)
    with pytest.warns(UserWarning, match="'os.system' is not registered"):
        got = load_graph(tmp_path / "g")(x)
    assert isinstance(got, tuple) and torch.equal(got[0], x + 1) and torch.equal(got[1], x * 2)


@pytest.fixture
def saved(tmp_path):
    x = torch.randn(2, 4)
    gm = from_torch(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), (x,))
    save_graph(gm, tmp_path / "art")
    return tmp_path / "art"


def _edit_graph_json(directory, edit):
    path = directory / GRAPH_FILE
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("target", ["builtins.eval", "os.system", "prims::add.default", "operator.__class__",
                                    "aten::__class__.default", "aten::__and__.__class__", "aten::__init__",
                                    "aten::no_such_op.default", "torch.load", "bitfold::pack_weight"])
def test_targets_outside_the_allow_list_are_refused(saved, target):
    def edit(document):
        relu = next(n for n in document["nodes"] if n["op"] == "call_function" and "relu" in n["target"])
        relu["target"] = target

    _edit_graph_json(saved, edit)
    with pytest.raises(ValueError, match="relu") as info:
        load_graph(saved)
    assert isinstance(info.value, GraphFormatError)
    assert target in str(info.value) and GRAPH_FILE in str(info.value)


def test_a_graph_with_an_unsavable_target_is_refused_before_writing(tmp_path):
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.sigmoid, (x,)))
    gm = fx.GraphModule(nn.Module(), graph)
    with pytest.raises(GraphFormatError, match="sigmoid"):
        save_graph(gm, tmp_path / "g")
    assert os.listdir(tmp_path) == []


def test_truncated_json_missing_and_corrupt_files_name_the_file(saved):
    text = (saved / GRAPH_FILE).read_text()
    (saved / GRAPH_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{GRAPH_FILE}.*truncated or corrupt"):
        load_graph(saved)
    (saved / GRAPH_FILE).write_text(text)

    blob = (saved / TENSORS_FILE).read_bytes()
    (saved / TENSORS_FILE).write_bytes(blob[: len(blob) - 7])
    with pytest.raises(ValueError, match=TENSORS_FILE):
        load_graph(saved)
    os.remove(saved / TENSORS_FILE)
    with pytest.raises(ValueError, match=f"{TENSORS_FILE}: missing"):
        load_graph(saved)
    os.remove(saved / GRAPH_FILE)
    with pytest.raises(ValueError, match=f"{GRAPH_FILE}: missing"):
        load_graph(saved)
    with pytest.raises(ValueError, match="no such directory"):
        load_graph(saved / "nowhere")


def test_schema_version_is_checked(saved):
    _edit_graph_json(saved, lambda d: d.update(version=99))
    with pytest.raises(ValueError, match="schema version 99.*newer"):
        load_graph(saved)
    _edit_graph_json(saved, lambda d: d.update(version=1, format="something.else"))
    with pytest.raises(ValueError, match="not a bitfold graph"):
        load_graph(saved)


def test_inconsistent_graph_json_is_refused(saved):
    def dangling(document):
        relu = next(n for n in document["nodes"] if n["op"] == "call_function" and "relu" in n["target"])
        relu["args"][0] = {"type": "node", "name": "later"}

    _edit_graph_json(saved, dangling)
    with pytest.raises(ValueError, match="'later', which is not an earlier node"):
        load_graph(saved)


def test_names_that_would_inject_code_are_refused(saved, tmp_path):
    def kwarg(document):
        relu = next(n for n in document["nodes"] if n["op"] == "call_function" and "relu" in n["target"])
        relu["kwargs"] = [["x=__import__('os').getpid() or None, y", None]]

    _edit_graph_json(saved, kwarg)
    with pytest.raises(ValueError, match="keyword names must be identifiers"):
        load_graph(saved)

    gm = from_torch(Block(), _inputs()[:1], example_kwargs={"mask": _inputs()[1]})
    save_graph(gm, tmp_path / "kw")

    def spec_key(document):
        document["signature"]["in_spec"]["children"][1]["keys"] = ["mask':__import__('os').getpid(),'m"]

    _edit_graph_json(tmp_path / "kw", spec_key)
    with pytest.raises(ValueError, match="not identifiers"):
        load_graph(tmp_path / "kw")


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_graph must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    loaded = load_graph(saved)
    assert loaded(torch.ones(2, 4)).shape == (2, 3)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    x = torch.randn(2, 4)
    gm = from_torch(nn.Linear(4, 3), (x,))
    gm.register_buffer("bad", torch.zeros(2, dtype=torch.complex128))  # safetensors cannot store it
    with pytest.raises(Exception):
        save_graph(gm, tmp_path / "art")
    assert os.listdir(tmp_path) == []


def test_a_failed_overwrite_keeps_the_old_artifact(tmp_path, monkeypatch):
    x = torch.randn(2, 4)
    gm = from_torch(nn.Linear(4, 3), (x,))
    save_graph(gm, tmp_path / "art", extra_meta={"generation": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_graph(gm, tmp_path / "art", extra_meta={"generation": 2})

    import safetensors.torch

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_graph(gm, tmp_path / "art", extra_meta={"generation": 2}, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["art"]
    assert read_extra_meta(tmp_path / "art") == {"generation": 1}
    assert torch.equal(load_graph(tmp_path / "art")(x), gm(x))

    save_graph(gm, tmp_path / "art", extra_meta={"generation": 3}, overwrite=True)
    assert os.listdir(tmp_path) == ["art"] and read_extra_meta(tmp_path / "art") == {"generation": 3}
