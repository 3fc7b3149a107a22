"""Save and load canonical FX graphs as a directory that loads without unpickling anything.

:func:`save_graph` writes a ``GraphModule`` in bitfold's canonical form (what
:func:`bitfold.ir.from_torch` / :func:`bitfold.ir.from_onnx` return, and graphs after bitfold
passes) to a directory; :func:`load_graph` reads it back into a ``GraphModule`` that runs and
gives bit-identical outputs. The directory holds two files:

``tensors.safetensors``
    Every parameter, buffer and tensor constant of the module under its dotted name
    (``encoder.layer.0.weight``), each stored as a contiguous copy (safetensors refuses
    shared storage and views). A tensor reachable under several names (tied weights) is
    stored once; the others are recorded as aliases and share one object after loading.

``graph.json``
    ``{"format": "bitfold.fx_graph", "version": 1, ...}`` with

    * ``nodes``: in graph order, each ``{"name", "op", "target", "args", "kwargs", "meta"}``.
      ``op`` is ``placeholder``, ``get_attr``, ``call_function`` or ``output``. A
      ``call_function`` target is a qualified string: ``"aten::linear.default"``,
      ``"bitfold::quantized_linear.default"`` (an op packet without overload drops the
      ``.overload`` part) or ``"operator.getitem"``. Arguments are JSON with type tags:
      ``null``/``true``/``false``/integers/strings stand for themselves; everything else is
      an object ``{"type": ...}``: ``node`` (a reference to an earlier node by name),
      ``float`` (a number, or ``"inf"``/``"-inf"``/``"nan"``), ``list``, ``tuple``, ``dict``
      (``items`` as ``[key, value]`` pairs), ``slice``, ``ellipsis``, ``dtype``, ``device``,
      ``layout``, ``memory_format``. Of ``node.meta`` only ``bitfold_why`` (list of str) and
      ``bitfold_input_norm`` (str) are kept; the rest (``val``, ``stack_trace``,
      ``nn_module_stack``, ONNX provenance…) is dropped — re-run
      :func:`bitfold.ir.graph_utils.propagate_shapes` where a pass needs ``meta["val"]``.
    * ``tensors``: ``{"name", "kind", "dtype", "shape"}`` per tensor, ``kind`` being
      ``parameter``, ``buffer`` (with ``persistent``) or ``constant`` (a plain tensor
      attribute, as ``torch.export`` registers lifted constants), plus ``alias_of`` for a
      second name of the same tensor.
    * ``signature``: how the module is called (below).
    * ``graph_meta``: the entries of ``gm.meta`` whose values survive a JSON round trip
      exactly (``bitfold_source``, ``onnx_initializers``…); ``graph_meta_dropped`` names the
      others. ``extra_meta``: the caller's ``extra_meta`` (any JSON value), returned by
      :func:`read_extra_meta` and put in ``gm.meta["bitfold_extra_meta"]`` on load.

Loading resolves call targets only from an allow-list — the ``torch.ops.aten`` and
``torch.ops.bitfold`` namespaces and the ``operator`` module — and never calls ``pickle`` or
``torch.load``: tensors come from safetensors, everything else from JSON. Any other target,
an unknown schema version, a missing or malformed file gives a :class:`GraphFormatError`
(a ``ValueError``) naming the file, and the node where there is one.

**Signature.** Graphs from ``torch.export`` (``from_torch``) flatten their inputs and
rebuild their outputs with pytree specs (a ``_PyTreeCodeGen``): ``gm(x)`` may return a
tensor, a dict or nested tuples, and take keyword inputs. The specs are saved in bitfold's
own JSON encoding (not ``treespec_dumps``, whose loader imports modules named in the
file), so the loaded module is called and returns exactly like the saved one. Tuples,
lists, dicts with str/int keys and leaves are encoded directly; a type registered with
pytree under a serialized name whose context is plain JSON (``transformers``'
``ModelOutput``, ``OrderedDict``) is saved by that name and looked up in pytree's registry
on load — never imported — so it is rebuilt when its library has been imported, and
otherwise that side is loaded flat with a warning. A spec holding anything else (a plain
namedtuple, a custom context) is saved flat on that side, with a warning and a note in
``signature.notes``. Flat means: the module takes the placeholders positionally and/or
returns the output node's values as they are (a tuple of leaves). Graphs without a pytree
signature (``from_onnx``: positional inputs, a tuple out; hand-built graphs) keep theirs.

**Writes are atomic.** Everything is encoded and checked in memory first, then written to a
temporary directory next to ``directory`` and renamed into place: a failure leaves no
half-written artifact. An existing non-empty ``directory`` is replaced only with
``overwrite=True``.

Loaded parameters are ``nn.Parameter(requires_grad=False)`` on the CPU (an inference
artifact); buffers keep their persistence; the result is ``gm.recompile()``-d.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import shutil
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.utils._pytree as pytree
from torch import fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

from bitfold.ir import ops as _ops  # noqa: F401  (registers torch.ops.bitfold.*)

__all__ = [
    "FORMAT",
    "GRAPH_FILE",
    "GraphFormatError",
    "SCHEMA_VERSION",
    "TENSORS_FILE",
    "load_graph",
    "read_extra_meta",
    "save_graph",
]

FORMAT = "bitfold.fx_graph"
SCHEMA_VERSION = 1
GRAPH_FILE = "graph.json"
TENSORS_FILE = "tensors.safetensors"

#: ``node.meta`` entries that are saved, with the type each must have.
NODE_META_KEYS = {"bitfold_why": "list[str]", "bitfold_input_norm": "str"}
EXTRA_META_KEY = "bitfold_extra_meta"

_NODE_OPS = ("placeholder", "get_attr", "call_function", "output")
_OP_NAMESPACES = ("aten", "bitfold")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z, not $: no trailing newline
_ATTR_PART = re.compile(r"[A-Za-z0-9_]+\Z")

_DTYPES = {str(d).split(".", 1)[1]: d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_LAYOUTS = {str(v).split(".", 1)[1]: v for v in vars(torch).values() if isinstance(v, torch.layout)}
_MEMORY_FORMATS = {str(v).split(".", 1)[1]: v for v in vars(torch).values() if isinstance(v, torch.memory_format)}


class GraphFormatError(ValueError):
    """A graph that cannot be saved, or a saved graph that cannot be loaded; says which file/node."""


# --------------------------------------------------------------------------------- targets


def _encode_target(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        if target.namespace in _OP_NAMESPACES:
            return f"{target.namespace}::{target._opname}.{target._overloadname}"
    elif isinstance(target, torch._ops.OpOverloadPacket):
        namespace, _, name = target._qualified_op_name.partition("::")
        if namespace in _OP_NAMESPACES:
            return f"{namespace}::{name}"
    else:
        name = getattr(target, "__name__", None)
        if isinstance(name, str) and _IDENT.match(name) and getattr(operator, name, None) is target:
            return f"operator.{name}"
    raise GraphFormatError(
        f"node {node.name!r}: cannot save call target {target!r}: only torch.ops.aten, torch.ops.bitfold "
        "and operator.* targets can be saved"
    )


def _decode_target(text: Any, node: str, where: str) -> Any:
    def refuse(why: str) -> GraphFormatError:
        return GraphFormatError(
            f"{where}: node {node!r}: call target {text!r} {why}; allowed are torch.ops.aten.*, "
            "torch.ops.bitfold.* and operator.*"
        )

    if not isinstance(text, str):
        raise refuse("is not a string")
    if "::" in text:
        namespace, _, rest = text.partition("::")
        if namespace not in _OP_NAMESPACES:
            raise refuse("is not in an allowed namespace")
        name, dot, overload = rest.partition(".")
        # Dunder names are real operators (aten::__and__.Tensor); whatever getattr finds
        # must still be an OpOverload(Packet), so __class__ and friends are refused below.
        if not _IDENT.match(name) or (dot and not _IDENT.match(overload)):
            raise refuse("is not a well-formed operator name")
        try:
            packet = getattr(getattr(torch.ops, namespace), name)
            op = getattr(packet, overload) if dot else packet
        except (AttributeError, RuntimeError) as err:
            raise refuse(f"is not a registered operator ({err})") from None
        expected = torch._ops.OpOverload if dot else torch._ops.OpOverloadPacket
        if not isinstance(op, expected):
            raise refuse("is not an operator")
        return op
    module, dot, name = text.partition(".")
    if module == "operator" and dot and _IDENT.match(name) and not name.startswith("_"):
        fn = getattr(operator, name, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    raise refuse("is not allowed")


# --------------------------------------------------------------------------------- values


def _encode_value(value: Any, node: str) -> Any:
    """``value`` (a node argument) as tagged JSON; ``node`` names the node in errors."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if type(value) is not int:  # an IntEnum or another int subclass would lose its type
            raise GraphFormatError(f"node {node!r}: cannot save an argument of type {type(value).__name__}")
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return {"type": "float", "value": "nan"}
        if math.isinf(value):
            return {"type": "float", "value": "inf" if value > 0 else "-inf"}
        return {"type": "float", "value": float(value)}
    if isinstance(value, fx.Node):
        return {"type": "node", "name": value.name}
    if isinstance(value, torch.dtype):
        return {"type": "dtype", "value": str(value).split(".", 1)[1]}
    if isinstance(value, torch.device):
        return {"type": "device", "value": str(value)}
    if isinstance(value, torch.layout):
        return {"type": "layout", "value": str(value).split(".", 1)[1]}
    if isinstance(value, torch.memory_format):
        return {"type": "memory_format", "value": str(value).split(".", 1)[1]}
    if isinstance(value, slice):
        return {"type": "slice", "start": _encode_value(value.start, node), "stop": _encode_value(value.stop, node),
                "step": _encode_value(value.step, node)}
    if value is Ellipsis:
        return {"type": "ellipsis"}
    if type(value) in (tuple, torch.Size):  # fx itself turns a torch.Size argument into a tuple
        return {"type": "tuple", "items": [_encode_value(v, node) for v in value]}
    if isinstance(value, list):  # includes fx's immutable_list
        return {"type": "list", "items": [_encode_value(v, node) for v in value]}
    if isinstance(value, dict):  # includes fx's immutable_dict
        return {"type": "dict", "items": [[_encode_value(k, node), _encode_value(v, node)] for k, v in value.items()]}
    if isinstance(value, torch.Tensor):
        raise GraphFormatError(
            f"node {node!r}: a tensor literal in the arguments cannot be saved; register it as a constant "
            "(bitfold.ir.graph_utils.constant_node) so it is a get_attr node"
        )
    kind = f"{type(value).__module__}.{type(value).__name__}"
    raise GraphFormatError(f"node {node!r}: cannot save an argument of type {kind}")


def _decode_value(data: Any, env: Dict[str, fx.Node], node: str, where: str) -> Any:
    def bad(why: str) -> GraphFormatError:
        return GraphFormatError(f"{where}: node {node!r}: {why}")

    if data is None or isinstance(data, (bool, str)):
        return data
    if isinstance(data, int):
        return data
    if isinstance(data, float):
        raise bad(f"untagged float {data!r} (floats are stored as {{'type': 'float'}})")
    if isinstance(data, list):
        raise bad("untagged list (lists are stored as {'type': 'list'})")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise bad(f"malformed argument {data!r}")
    tag = data["type"]
    try:
        if tag == "node":
            name = data["name"]
            if not isinstance(name, str) or name not in env:
                raise bad(f"refers to {name!r}, which is not an earlier node")
            return env[name]
        if tag == "float":
            v = data["value"]
            if isinstance(v, str) and v in ("nan", "inf", "-inf"):
                return float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
            raise bad(f"malformed float {v!r}")
        if tag in ("list", "tuple"):
            items = data["items"]
            if not isinstance(items, list):
                raise bad(f"malformed {tag}")
            out = [_decode_value(v, env, node, where) for v in items]
            return out if tag == "list" else tuple(out)
        if tag == "dict":
            items = data["items"]
            if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
                raise bad("malformed dict")
            result = {}
            for key, value in items:
                key = _decode_value(key, env, node, where)
                try:
                    hash(key)
                except TypeError:
                    raise bad(f"unhashable dict key {key!r}") from None
                result[key] = _decode_value(value, env, node, where)
            return result
        if tag == "slice":
            return slice(*(_decode_value(data[k], env, node, where) for k in ("start", "stop", "step")))
        if tag == "ellipsis":
            return Ellipsis
        table = {"dtype": _DTYPES, "layout": _LAYOUTS, "memory_format": _MEMORY_FORMATS}.get(tag)
        if table is not None:
            if data["value"] not in table:
                raise bad(f"unknown {tag} {data['value']!r}")
            return table[data["value"]]
        if tag == "device":
            if not isinstance(data["value"], str):
                raise bad(f"malformed device {data['value']!r}")
            return torch.device(data["value"])
    except KeyError as err:
        raise bad(f"argument of type {tag!r} lacks {err}") from None
    except RuntimeError as err:  # torch.device of a malformed string
        raise bad(str(err)) from None
    raise bad(f"unknown argument type {tag!r}")


def _json_exact(value: Any) -> bool:
    """Whether ``value`` comes back from JSON unchanged (no tuples, int keys, NaN, objects)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value and _same_types(value)
    except (TypeError, ValueError):
        return False


def _same_types(value: Any) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(isinstance(k, str) and _same_types(v) for k, v in value.items())
    if isinstance(value, list):
        return type(value) is list and all(_same_types(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


# --------------------------------------------------------------------------------- pytree specs


def _encode_spec(spec: pytree.TreeSpec) -> Optional[Dict[str, Any]]:
    """A tuple/list/dict/leaf spec as JSON, or ``None`` when it holds any other node type."""
    if spec.is_leaf():
        return {"type": "leaf"}
    children = [_encode_spec(c) for c in spec.children()]
    if any(c is None for c in children):
        return None
    if spec.type is tuple:
        return {"type": "tuple", "children": children}
    if spec.type is list:
        return {"type": "list", "children": children}
    if spec.type is dict and all(type(k) in (str, int) for k in spec.context):
        return {"type": "dict", "keys": list(spec.context), "children": children}
    if spec.type is type(None):
        return {"type": "none"}
    # A type registered with pytree under a serialized name (transformers' ModelOutput,
    # OrderedDict…) whose context is plain JSON: saved by name, looked up in pytree's
    # registry on load (never imported).
    node_def = pytree.SUPPORTED_SERIALIZED_TYPES.get(spec.type)
    if (
        node_def is not None
        and isinstance(node_def.serialized_type_name, str)
        and node_def.serialized_type_name != pytree.NO_SERIALIZED_TYPE_NAME_FOUND
        and node_def.to_dumpable_context is None
        and node_def.from_dumpable_context is None
        and _json_exact(spec.context)
    ):
        return {"type": "registered", "name": node_def.serialized_type_name, "context": spec.context,
                "children": children}
    return None


class _SpecUnavailable(Exception):
    """A saved spec names a pytree type that is not registered in this process."""


def _decode_spec(data: Any, where: str) -> pytree.TreeSpec:
    if not isinstance(data, dict):
        raise GraphFormatError(f"{where}: malformed signature spec {data!r}")
    tag = data.get("type")
    if tag == "leaf":
        return pytree.treespec_leaf()
    if tag == "none":
        return pytree.TreeSpec(type(None), None, [])
    children = data.get("children")
    if tag not in ("tuple", "list", "dict", "registered") or not isinstance(children, list):
        raise GraphFormatError(f"{where}: malformed signature spec {data!r}")
    specs = [_decode_spec(c, where) for c in children]
    if tag == "dict":
        keys = data.get("keys")
        if not isinstance(keys, list) or len(keys) != len(specs) or not all(type(k) in (str, int) for k in keys):
            raise GraphFormatError(f"{where}: malformed dict keys in signature spec")
        return pytree.TreeSpec(dict, keys, specs)
    if tag == "registered":
        name = data.get("name")
        if not isinstance(name, str):
            raise GraphFormatError(f"{where}: malformed signature spec {data!r}")
        typ = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name)
        node_def = pytree.SUPPORTED_SERIALIZED_TYPES.get(typ) if typ is not None else None
        if node_def is None or node_def.from_dumpable_context is not None:
            raise _SpecUnavailable(f"pytree type {name!r} is not registered here (import the library that defines it)")
        return pytree.TreeSpec(typ, data.get("context"), specs)
    return pytree.TreeSpec(tuple if tag == "tuple" else list, None, specs)


def _spec_keys(spec: pytree.TreeSpec) -> List[Any]:
    keys = list(spec.context) if spec.type is dict else []
    for child in spec.children():
        keys.extend(_spec_keys(child))
    return keys


def _output_leaves(output_args: Any) -> int:
    return len(output_args) if isinstance(output_args, (list, tuple)) else 1


def _encode_signature(gm: fx.GraphModule) -> Dict[str, Any]:
    codegen = gm.graph._codegen
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not isinstance(codegen, _PyTreeCodeGen) or codegen.pytree_info is None:
        if type(codegen) is not fx.graph.CodeGen:
            raise GraphFormatError(f"cannot save a graph with a custom code generator ({type(codegen).__name__})")
        return {"kind": "flat", "notes": []}
    info = codegen.pytree_info
    output = next(n for n in gm.graph.nodes if n.op == "output")
    notes: List[str] = []
    in_spec = _encode_spec(info.in_spec) if info.in_spec is not None else None
    if in_spec is None:
        notes.append(f"input spec not saved (holds a type that is not tuple/list/dict or registered): {info.in_spec}")
    elif info.in_spec.num_leaves != len(placeholders) or len(info.orig_args) != len(placeholders):
        notes.append("input spec not saved: it does not match the graph's placeholders")
        in_spec = None
    out_spec = _encode_spec(info.out_spec) if info.out_spec is not None else None
    if info.out_spec is not None and out_spec is None:
        notes.append(f"output spec not saved (holds a type that is not tuple/list/dict or registered): {info.out_spec}")
    elif out_spec is not None and info.out_spec.num_leaves != _output_leaves(output.args[0]):
        notes.append("output spec not saved: it does not match the graph's outputs")
        out_spec = None
    for note in notes:
        warnings.warn(f"save_graph: {note}; the loaded module uses a flat signature on that side", stacklevel=3)
    return {
        "kind": "pytree",
        "orig_args": list(info.orig_args) if in_spec is not None else [n.name for n in placeholders],
        "in_spec": in_spec,
        "out_spec": out_spec,
        "notes": notes,
    }


def _apply_signature(graph: fx.Graph, sig: Any, where: str) -> None:
    if not isinstance(sig, dict) or sig.get("kind") not in ("flat", "pytree"):
        raise GraphFormatError(f"{where}: malformed 'signature' {sig!r}")
    if sig["kind"] == "flat":
        return
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph.nodes if n.op == "output")
    orig_args = sig.get("orig_args")
    if not isinstance(orig_args, list) or not all(isinstance(a, str) and _IDENT.match(a) for a in orig_args):
        raise GraphFormatError(f"{where}: malformed signature 'orig_args'")
    in_spec = out_spec = None
    if sig.get("in_spec") is not None:
        try:
            in_spec = _decode_spec(sig["in_spec"], where)
        except _SpecUnavailable as err:
            warnings.warn(f"load_graph: {where}: input spec not restored: {err}; inputs are positional", stacklevel=3)
            orig_args = [n.name for n in placeholders]
        else:
            # Keyword-input names go into the generated forward() source verbatim: identifiers only.
            if not all(_IDENT.match(k) for k in _spec_keys(in_spec) if isinstance(k, str)):
                raise GraphFormatError(f"{where}: the input signature has keys that are not identifiers")
    if in_spec is None:
        in_spec = pytree.TreeSpec(tuple, None, [
            pytree.TreeSpec(tuple, None, [pytree.treespec_leaf() for _ in placeholders]),
            pytree.TreeSpec(dict, [], []),
        ])
    if sig.get("out_spec") is not None:
        try:
            out_spec = _decode_spec(sig["out_spec"], where)
        except _SpecUnavailable as err:
            warnings.warn(f"load_graph: {where}: output spec not restored: {err}; the output is a flat tuple",
                          stacklevel=3)
    if in_spec.num_leaves != len(placeholders) or len(orig_args) != len(placeholders):
        raise GraphFormatError(f"{where}: the input signature does not match the {len(placeholders)} placeholders")
    if out_spec is not None and out_spec.num_leaves != _output_leaves(output.args[0]):
        raise GraphFormatError(f"{where}: the output signature does not match the output node")
    graph._codegen = _PyTreeCodeGen(_PyTreeInfo(orig_args, in_spec, out_spec))


# --------------------------------------------------------------------------------- tensors


def _resolve(gm: torch.nn.Module, dotted: str) -> Any:
    obj: Any = gm
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _collect_tensors(gm: fx.GraphModule) -> Tuple[List[Dict[str, Any]], Dict[str, torch.Tensor]]:
    """The tensor records for ``graph.json`` and the contiguous copies to store."""
    records: List[Dict[str, Any]] = []
    stored: Dict[str, torch.Tensor] = {}
    first_name: Dict[int, str] = {}

    def add(name: str, value: torch.Tensor, kind: str, persistent: Optional[bool] = None) -> None:
        record: Dict[str, Any] = {"name": name, "kind": kind}
        if persistent is not None:
            record["persistent"] = persistent
        if id(value) in first_name:
            record["alias_of"] = first_name[id(value)]
        else:
            first_name[id(value)] = name
            if value.layout != torch.strided or value.is_quantized:
                raise GraphFormatError(f"tensor {name!r}: cannot save a {value.layout} tensor")
            record["dtype"] = str(value.dtype).split(".", 1)[1]
            record["shape"] = list(value.shape)
            # A fresh contiguous CPU copy: safetensors refuses views and shared storage.
            stored[name] = value.detach().to("cpu", copy=True).contiguous()
        records.append(record)

    for name, p in gm.named_parameters(remove_duplicate=False):
        add(name, p, "parameter")
    for name, b in gm.named_buffers(remove_duplicate=False):
        *path, leaf = name.split(".")
        owner = gm.get_submodule(".".join(path)) if path else gm
        add(name, b, "buffer", leaf not in owner._non_persistent_buffers_set)
    known = {r["name"] for r in records}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in known:
            continue
        value = _resolve(gm, str(node.target))
        if not isinstance(value, torch.Tensor):
            raise GraphFormatError(
                f"node {node.name!r}: get_attr target {node.target!r} is "
                f"{'missing' if value is None else 'a ' + type(value).__name__}, not a tensor"
            )
        add(str(node.target), value, "constant")
        known.add(str(node.target))
    return records, stored


def _install(gm: torch.nn.Module, record: Dict[str, Any], value: torch.Tensor) -> None:
    *path, leaf = record["name"].split(".")
    owner = gm
    for part in path:
        child = owner._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            owner.add_module(part, child)
        owner = child
    kind = record["kind"]
    if kind == "parameter":
        if not isinstance(value, torch.nn.Parameter):
            value = torch.nn.Parameter(value, requires_grad=False)
        owner.register_parameter(leaf, value)
    elif kind == "buffer":
        owner.register_buffer(leaf, value, persistent=bool(record.get("persistent", True)))
    else:
        if hasattr(owner, leaf):
            raise KeyError(f"attribute {leaf!r} already exists")
        setattr(owner, leaf, value)


# --------------------------------------------------------------------------------- save


def save_graph(
    gm: fx.GraphModule,
    directory: "os.PathLike[str] | str",
    extra_meta: Optional[Dict[str, Any]] = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write ``gm`` to ``directory`` as ``graph.json`` + ``tensors.safetensors`` (see the module doc).

    ``extra_meta`` is any JSON value the caller wants kept with the graph (a quantization
    manifest, say). The write is atomic; ``directory`` may not exist yet or be empty, and
    an existing non-empty one is replaced only with ``overwrite=True``. Raises
    :class:`GraphFormatError` naming the node for what cannot be saved (a target outside
    aten/bitfold/operator, a ``call_module``, an argument of an unsupported type).
    """
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"save_graph expects a torch.fx.GraphModule, got {type(gm).__name__}")
    directory = os.path.abspath(os.fspath(directory))

    nodes = []
    for node in gm.graph.nodes:
        if node.op not in _NODE_OPS:
            raise GraphFormatError(
                f"node {node.name!r}: cannot save a {node.op} node ({node.target!r}); canonical graphs hold only "
                + ", ".join(_NODE_OPS)
            )
        if node.op == "call_function":
            target = _encode_target(node)
        else:
            target = str(node.target)
        meta = {}
        for key in NODE_META_KEYS:
            value = node.meta.get(key)
            ok = isinstance(value, str) if key == "bitfold_input_norm" else (
                isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
            if ok:
                meta[key] = list(value) if isinstance(value, tuple) else value
        nodes.append({
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": _encode_value(tuple(node.args), node.name)["items"],
            "kwargs": _encode_value(dict(node.kwargs), node.name)["items"],
            "meta": meta,
        })

    records, stored = _collect_tensors(gm)
    graph_meta = {k: v for k, v in gm.meta.items() if isinstance(k, str) and _json_exact(v)}
    dropped = sorted(str(k) for k in gm.meta if k not in graph_meta)
    try:
        json.dumps(extra_meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GraphFormatError(f"extra_meta is not JSON-serializable: {err}") from None

    import bitfold

    document = {
        "format": FORMAT,
        "version": SCHEMA_VERSION,
        "producer": {"bitfold": getattr(bitfold, "__version__", None), "torch": torch.__version__},
        "signature": _encode_signature(gm),
        "nodes": nodes,
        "tensors": records,
        "graph_meta": graph_meta,
        "graph_meta_dropped": dropped,
        "extra_meta": extra_meta,
    }
    text = _dump(document)
    _write_atomically(directory, text, stored, overwrite)


def _dump(document: Dict[str, Any]) -> str:
    """JSON with one line per top-level entry and per node / tensor record: diffable, compact."""
    parts = []
    for key, value in document.items():
        if key in ("nodes", "tensors"):
            body = ",\n".join("  " + json.dumps(v, allow_nan=False) for v in value)
            parts.append(f"{json.dumps(key)}: [\n{body}\n ]" if value else f"{json.dumps(key)}: []")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def _write_atomically(directory: str, text: str, stored: Dict[str, torch.Tensor], overwrite: bool) -> None:
    from safetensors.torch import save_file

    parent, base = os.path.split(directory)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise FileExistsError(f"{directory} exists and is not a directory")
        if os.listdir(directory) and not overwrite:
            raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True to replace it")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    try:
        tensors_path = os.path.join(tmp, TENSORS_FILE)
        save_file(stored, tensors_path, metadata={"format": FORMAT, "version": str(SCHEMA_VERSION)})
        _fsync(tensors_path)
        graph_path = os.path.join(tmp, GRAPH_FILE)
        with open(graph_path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(directory):
            # Two renames: the old artifact stays whole until the new one is complete.
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rename(directory, os.path.join(old, base))
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(os.path.join(old, base), directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(parent)


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------- load


def _read_document(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, GRAPH_FILE)
    if not os.path.isdir(directory):
        raise GraphFormatError(f"{directory}: not a saved bitfold graph (no such directory)")
    if not os.path.isfile(path):
        raise GraphFormatError(f"{path}: missing; {directory} is not a saved bitfold graph")
    try:
        with open(path, "r", encoding="utf-8") as f:
            document = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GraphFormatError(f"{path}: not valid JSON ({err}); the file is truncated or corrupt") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise GraphFormatError(f"{path}: not a bitfold graph (expected \"format\": \"{FORMAT}\")")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GraphFormatError(f"{path}: malformed schema version {version!r}")
    if version > SCHEMA_VERSION:
        raise GraphFormatError(
            f"{path}: schema version {version} was written by a newer bitfold; this one reads up to {SCHEMA_VERSION}"
        )
    for key, kind in (("nodes", list), ("tensors", list), ("signature", dict), ("graph_meta", dict)):
        if not isinstance(document.get(key), kind):
            raise GraphFormatError(f"{path}: missing or malformed {key!r}")
    return document


def read_extra_meta(directory: "os.PathLike[str] | str") -> Any:
    """The ``extra_meta`` saved with the graph in ``directory``, without loading tensors."""
    return _read_document(os.fspath(directory)).get("extra_meta")


def _load_tensors(directory: str, records: List[Any], where: str) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(directory, TENSORS_FILE)
    if not os.path.isfile(path):
        raise GraphFormatError(f"{path}: missing; the graph's tensors are not there")
    try:
        loaded = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise GraphFormatError(f"{path}: cannot read tensors ({err}); the file is truncated or corrupt") from None
    expected = set()
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise GraphFormatError(f"{where}: malformed tensor record {record!r}")
        name = record["name"]
        if record.get("kind") not in ("parameter", "buffer", "constant"):
            raise GraphFormatError(f"{where}: tensor {name!r} has unknown kind {record.get('kind')!r}")
        if not all(_ATTR_PART.match(p) and not p.startswith("__") for p in name.split(".")):
            raise GraphFormatError(f"{where}: malformed tensor name {name!r}")
        if "alias_of" in record:
            continue
        expected.add(name)
        if name not in loaded:
            raise GraphFormatError(f"{path}: tensor {name!r} is missing")
        t = loaded[name]
        if str(t.dtype).split(".", 1)[1] != record.get("dtype") or list(t.shape) != record.get("shape"):
            raise GraphFormatError(
                f"{path}: tensor {name!r} is {t.dtype} {list(t.shape)}, {GRAPH_FILE} says "
                f"{record.get('dtype')} {record.get('shape')}"
            )
    extra = sorted(set(loaded) - expected)
    if extra:
        raise GraphFormatError(f"{path}: tensors not listed in {GRAPH_FILE}: {', '.join(extra[:5])}")
    return loaded


def load_graph(directory: "os.PathLike[str] | str") -> fx.GraphModule:
    """Read a graph written by :func:`save_graph`; see the module doc for what comes back.

    Never unpickles: tensors come from safetensors, the graph from JSON, call targets only
    from ``torch.ops.aten``, ``torch.ops.bitfold`` and ``operator``. Raises
    :class:`GraphFormatError` (a ``ValueError``) naming the file, and the node if any.
    """
    directory = os.fspath(directory)
    document = _read_document(directory)
    where = os.path.join(directory, GRAPH_FILE)
    records = document["tensors"]
    loaded = _load_tensors(directory, records, where)

    gm = fx.GraphModule(torch.nn.Module(), fx.Graph())
    objects: Dict[str, torch.Tensor] = {}
    for record in records:
        name = record["name"]
        if "alias_of" in record:
            if record["alias_of"] not in objects:
                raise GraphFormatError(
                    f"{where}: tensor {name!r} aliases {record['alias_of']!r}, which is not an earlier tensor"
                )
            value = objects[record["alias_of"]]
        else:
            value = loaded[name]
            if record["kind"] == "parameter":
                value = torch.nn.Parameter(value, requires_grad=False)
        try:
            _install(gm, record, value)
        except (KeyError, TypeError) as err:
            raise GraphFormatError(f"{where}: cannot place tensor {name!r}: {err}") from None
        objects[name] = value

    graph = fx.Graph()
    env: Dict[str, fx.Node] = {}
    seen_output = False
    for index, rec in enumerate(document["nodes"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise GraphFormatError(f"{where}: node #{index} is malformed")
        name, op = rec["name"], rec.get("op")
        if not _IDENT.match(name):
            raise GraphFormatError(f"{where}: node #{index}: malformed name {name!r}")
        if name in env:
            raise GraphFormatError(f"{where}: node {name!r} appears twice")
        if op not in _NODE_OPS:
            raise GraphFormatError(f"{where}: node {name!r}: op {op!r} is not one of {', '.join(_NODE_OPS)}")
        if seen_output:
            raise GraphFormatError(f"{where}: node {name!r} comes after the output node")
        if not isinstance(rec.get("args"), list) or not isinstance(rec.get("kwargs"), list):
            raise GraphFormatError(f"{where}: node {name!r}: malformed args/kwargs")
        args = _decode_value({"type": "tuple", "items": rec["args"]}, env, name, where)
        kwargs = _decode_value({"type": "dict", "items": rec["kwargs"]}, env, name, where)
        # Keyword names go into the generated forward() source verbatim: identifiers only.
        if not all(isinstance(k, str) and _IDENT.match(k) for k in kwargs):
            raise GraphFormatError(f"{where}: node {name!r}: keyword names must be identifiers, got {list(kwargs)}")
        target = rec.get("target")
        if op == "call_function":
            target = _decode_target(target, name, where)
        elif not isinstance(target, str):
            raise GraphFormatError(f"{where}: node {name!r}: malformed target {target!r}")
        elif op == "get_attr" and target not in objects:
            raise GraphFormatError(f"{where}: node {name!r}: get_attr target {target!r} is not a saved tensor")
        elif op == "placeholder" and not _IDENT.match(target.lstrip("*")):
            raise GraphFormatError(f"{where}: node {name!r}: malformed placeholder name {target!r}")
        new = graph.create_node(op, target, args, kwargs, name=name)
        meta = rec.get("meta", {})
        if not isinstance(meta, dict):
            raise GraphFormatError(f"{where}: node {name!r}: malformed meta")
        if isinstance(meta.get("bitfold_why"), list) and all(isinstance(v, str) for v in meta["bitfold_why"]):
            new.meta["bitfold_why"] = list(meta["bitfold_why"])
        if isinstance(meta.get("bitfold_input_norm"), str):
            new.meta["bitfold_input_norm"] = meta["bitfold_input_norm"]
        env[name] = new
        seen_output = seen_output or op == "output"
    if not graph.nodes or next(iter(reversed(graph.nodes))).op != "output":
        raise GraphFormatError(f"{where}: the graph has no output node")
    _apply_signature(graph, document["signature"], where)
    try:
        graph.lint()
    except Exception as err:  # fx raises RuntimeError / AssertionError for inconsistent graphs
        raise GraphFormatError(f"{where}: the saved graph is inconsistent: {err}") from None

    gm.graph = graph
    gm.meta.update({k: v for k, v in document["graph_meta"].items()})
    if document.get("extra_meta") is not None:
        gm.meta[EXTRA_META_KEY] = document["extra_meta"]
    gm.recompile()
    return gm
