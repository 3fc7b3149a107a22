"""A readable summary of a canonical graph: op counts, quantizable layers, what stays float."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, List

from torch import fx

from bitfold.ir.graph_utils import attr_value
from bitfold.ir.quantizable import classify, norm_inputs


def _op_label(node: fx.Node) -> str:
    target = node.target
    namespace = getattr(target, "namespace", None)
    name = getattr(target, "__name__", str(target))
    return f"{namespace}.{name}" if namespace else name


def _table(rows: List[List[str]], header: List[str]) -> List[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows]


def summarize(gm: fx.GraphModule, max_float_examples: int = 3) -> str:
    """Op counts, the quantizable layers with their weight shapes, and float nodes by reason."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    params = sum(p.numel() for p in gm.parameters()) + sum(b.numel() for b in gm.buffers())
    lines = [f"graph: {len(nodes)} ops, {params:,} parameter values, source: {gm.meta.get('bitfold_source', '?')}", ""]

    counts = Counter(_op_label(n) for n in nodes)
    lines += ["op counts:"] + ["  " + line for line in _table([[op, str(c)] for op, c in counts.most_common()],
                                                             ["op", "count"])]

    layers: List[List[str]] = []
    floats: Dict[str, List[str]] = defaultdict(list)
    fed_by = norm_inputs(gm)
    for node in nodes:
        decision = classify(gm, node)
        if decision is None:
            continue
        if decision.quantizable:
            weight = attr_value(gm, node.args[0 if decision.kind == "embedding" else 1])
            shape = "x".join(map(str, weight.shape)) if weight is not None else "activation"
            norm = fed_by.get(node)
            layers.append([node.name, decision.kind or "", shape, norm.name if norm is not None else ""])
        else:
            floats[decision.reason].append(node.name)
    lines += ["", f"quantizable layers ({len(layers)}):"]
    lines += ["  " + line for line in _table(layers, ["node", "kind", "weight", "input norm"])] if layers else ["  none"]
    lines += ["", "stays float:"]
    for reason, names in sorted(floats.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(names[:max_float_examples]) + (", …" if len(names) > max_float_examples else "")
        lines.append(f"  {len(names):4d}  {reason}  ({shown})")
    return "\n".join(lines)
