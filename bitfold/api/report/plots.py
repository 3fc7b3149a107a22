"""The report's charts, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes plain analysis data and returns one PNG (or one per page of small
multiples), so the HTML can embed them as ``data:`` URIs and stay a single file.
"""

from __future__ import annotations

import io
import math
from typing import Callable, List, Sequence, Tuple

from bitfold.api.report.analysis import Histogram, LayerAnalysis, ShiftGroup

#: Colours used throughout: matplotlib's default cycle, so the page looks familiar.
BLUE, ORANGE, RED, GREY = "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"
_DPI = 80


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _layer_ticks(ax, names: Sequence[str]) -> None:
    step = max(1, len(names) // 48)
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)


def error_chart(layers: Sequence[LayerAnalysis], worst: int = 5) -> bytes:
    """Two panels in graph order: each layer's output SQNR inside the quantized model, and the
    model output's SQNR when only that layer is quantized (the ``worst`` lowest in red)."""
    plt = _pyplot()
    names = [r.layer for r in layers]
    sensitive = [r.sensitivity_sqnr_db for r in layers]
    panels = 2 if any(s is not None for s in sensitive) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(11, 2.6 * panels + 0.8), sharex=True, squeeze=False)
    x = list(range(len(names)))
    ax = axes[0][0]
    ax.bar(x, [r.output_sqnr_db for r in layers], color=BLUE)
    ax.set_ylabel("layer output\nSQNR (dB)")
    ax.set_title("Per-layer error vs float (higher is better)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if panels == 2:
        values = [s if s is not None else 0.0 for s in sensitive]
        order = sorted(range(len(values)), key=values.__getitem__)[:worst]
        colors = [RED if i in order else ORANGE for i in x]
        ax = axes[1][0]
        ax.bar(x, values, color=colors)
        ax.set_ylabel("model output SQNR (dB)\nonly this layer quantized")
        ax.grid(axis="y", alpha=0.3)
    _layer_ticks(axes[-1][0], names)
    return _png(fig)


def recipe_chart(entries: Sequence[Tuple[str, float]], metric: str) -> bytes:
    """Horizontal bars: one per recipe (or model variant), labelled with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(entries) + 1.0))
    labels = [label for label, _ in entries]
    values = [value for _, value in entries]
    bars = ax.barh(range(len(entries)), values, color=BLUE)
    ax.set_yticks(range(len(entries)))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    for bar, value in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.4g}", va="center", fontsize=8)
    return _png(fig)


def _draw_histogram(ax, hist: Histogram, title: str, max_lines: int = 40) -> None:
    """Bars of the counts (log scale); the grid's points as red lines on top (only its two ends,
    dashed, when it has more than ``max_lines`` points) and the clipped region shaded."""
    from matplotlib.ticker import NullFormatter

    centers = [(a + b) / 2 for a, b in zip(hist.edges[:-1], hist.edges[1:])]
    width = hist.edges[1] - hist.edges[0]
    ax.bar(centers, [max(c, 0) for c in hist.counts], width=width, color=BLUE)
    if any(hist.counts):
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    grid = hist.grid or []
    if grid:
        lo, hi = min(grid), max(grid)
        ax.axvspan(hist.edges[0], lo, color=RED, alpha=0.08, zorder=0)
        ax.axvspan(hi, hist.edges[-1], color=RED, alpha=0.08, zorder=0)
        lines = grid if len(grid) <= max_lines else [lo, hi]
        style = "-" if len(grid) <= max_lines else "--"
        for g in lines:
            ax.axvline(g, color=RED, alpha=0.6, linewidth=0.7, linestyle=style, zorder=3)
        note = f"{len(grid)} grid points, {hist.beyond_grid:.2%} beyond"
    else:
        note = "no fixed grid"
    ax.set_xlim(hist.edges[0], hist.edges[-1])
    ax.set_title(f"{title}\n{note}", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.set_xlabel(hist.units, fontsize=6)


def _small_multiples(items: Sequence, draw: Callable, per_page: int, columns: int, row_height: float) -> List[bytes]:
    """Pages of ``columns``-wide grids, ``draw(ax, item)`` per item; empty cells hidden."""
    plt = _pyplot()
    pages = []
    for start in range(0, len(items), per_page):
        chunk = items[start:start + per_page]
        rows = -(-len(chunk) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(11, row_height * rows), squeeze=False)
        cells = [a for row in axes for a in row]
        for ax, item in zip(cells, chunk):
            draw(ax, item)
        for ax in cells[len(chunk):]:
            ax.axis("off")
        fig.tight_layout()
        pages.append(_png(fig))
    return pages


def histogram_pages(layers: Sequence[LayerAnalysis], kind: str, per_page: int = 16, columns: int = 4) -> List[bytes]:
    """Small multiples of ``kind`` (``"weight"`` or ``"act"``) histograms, the grid in red."""
    def draw(ax, layer: LayerAnalysis) -> None:
        hist = layer.weight_hist if kind == "weight" else layer.act_hist
        fmt = layer.weight_format if kind == "weight" else (layer.act_format or "float")
        _draw_histogram(ax, hist, f"{layer.layer} · {fmt}")

    return _small_multiples(layers, draw, per_page, columns, 2.3)


def shift_pages(groups: Sequence[ShiftGroup], per_page: int = 6, columns: int = 2) -> List[bytes]:
    """Per shared input: the exponent shift ``k_j`` of each channel (bars) and
    ``log2 max|x_j|`` (line), which the shifts should follow."""
    def draw(ax, group: ShiftGroup) -> None:
        channels = range(len(group.shift))
        ax.bar(channels, group.shift, width=1.0, color=BLUE, label="shift k")
        ax.set_ylabel("k", fontsize=7)
        twin = ax.twinx()
        twin.plot(channels, [math.log2(a) if a > 0 else float("nan") for a in group.channel_absmax],
                  color=ORANGE, linewidth=0.8)
        twin.set_ylabel("log2 max|x|", fontsize=7, color=ORANGE)
        twin.tick_params(labelsize=6)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("input channel", fontsize=7)
        ax.set_title(f"{group.group} → {', '.join(group.layers)}", fontsize=8)

    return _small_multiples(groups, draw, per_page, columns, 2.6)
