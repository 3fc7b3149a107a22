"""Plain-text tables and the size/format facts the CLI prints about a quantized model."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, List, Sequence, Tuple

QUANTIZED_LINEAR = "bitfold::quantized_linear"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> List[str]:
    """Left-aligned columns under a dashed rule."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [indent + line for line in lines]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def weight_bytes(graph_module) -> Tuple[int, int]:
    """Bytes of the quantized layers' weights: as float32 ``N·K·4``, and as stored (packed
    codes, scales, zero points)."""
    import torch

    from bitfold.ir.graph_utils import attr_value

    as_float = stored = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.bitfold.quantized_linear.default:
            continue
        n_out, k_in = node.args[3], node.args[4]
        as_float += 4 * n_out * k_in
        for arg in (node.args[1], node.args[5], node.args[7] if len(node.args) > 7 else None):
            t = attr_value(graph_module, arg)
            if t is not None:
                stored += t.numel() * t.element_size()
    return as_float, stored


def format_mix(layers) -> str:
    """``"36 × int8/channel"``-style counts of the weight formats chosen per layer."""
    counts = Counter(f"{r.weight_format}/{r.granularity}" for r in layers)
    return ", ".join(f"{n} × {fmt}" for fmt, n in counts.most_common())


def fmt_db(value: Any) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.1f}"
