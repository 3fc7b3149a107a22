"""Plain-text tables and the size/format facts the CLI prints about a quantized model."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, List, Sequence, Tuple

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


def weight_bytes(graph_module) -> Tuple[int, int, float]:
    """The quantized layers' weights: bytes as float32 (``N·K·4``), bytes as stored (codes,
    cluster ids, scales, zero points; :func:`bitfold.api.quantized_model.weight_memory`), and
    the stored bits per weight."""
    from bitfold.api.quantized_model import weight_memory

    memory = weight_memory(graph_module)
    count = memory["quantized_weights"]
    stored_bits = sum(sum(layer["bits"].values()) for layer in memory["layers"].values())
    return 4 * count, stored_bits // 8, memory["bits_per_weight"] or 0.0


def format_mix(layers) -> str:
    """``"36 × int8/channel"``-style counts of the weight formats chosen per layer."""
    counts = Counter(f"{r.weight_format}/{r.granularity}" for r in layers)
    return ", ".join(f"{n} × {fmt}" for fmt, n in counts.most_common())


def fmt_db(value: Any) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.1f}"
