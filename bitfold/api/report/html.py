"""Render analyses as one self-contained HTML page: inline CSS, PNG plots as ``data:`` URIs.

The page answers, in order: how far the quantized model is from float (and from other
recipes, when given), which layers cost most, what stayed float and why, what the weights
and activations look like against their quantization grid, and the LLM-FP4 shifts.
"""

from __future__ import annotations

import base64
import html
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import bitfold
from bitfold.api.report import plots
from bitfold.api.report.analysis import Analysis, LayerAnalysis, write_atomically

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #ddd; }
p.sub { color: #666; margin-top: 0; } p.note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.worst td { background: #fde8e8; }
img { max-width: 100%; display: block; margin: 8px 0; }
"""


def _fmt(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (),
           highlight: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td class=\"num\">{html.escape(str(c))}</td>" if j in numeric else f"<td>{html.escape(str(c))}</td>"
            for j, c in enumerate(row)
        )
        cls = " class=\"worst\"" if i in highlight else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{data}\">"


def _ranked(layers: Sequence[LayerAnalysis]) -> List[LayerAnalysis]:
    """Most costly first: by sensitivity SQNR when measured, else by output SQNR."""
    def key(r: LayerAnalysis) -> float:
        return r.sensitivity_sqnr_db if r.sensitivity_sqnr_db is not None else r.output_sqnr_db
    return sorted(layers, key=key)


def _summary(a: Analysis) -> str:
    inputs = a.inputs
    held = "held out from calibration" if inputs.get("held_out") else "the calibration inputs (too few to hold any out)"
    rows = [
        ["model", a.source],
        ["recipe", f"{a.recipe.get('name')} (v{a.recipe.get('version')}): {a.recipe.get('description')}"],
        ["layers quantized", str(len(a.layers))],
        ["layers kept float", str(len(a.kept_float))],
        ["model output vs float", f"SQNR {_fmt(a.output['sqnr_db'])} dB, MSE {_fmt(a.output['mse'])}, "
                                  f"cosine {_fmt(a.output['cosine'], 6)}"],
        ["evaluated on", f"{inputs.get('items')} batch(es) of {inputs.get('description') or 'inputs'}, {held}"],
    ]
    return _table(["", ""], rows)


def _recipes_section(analyses: Sequence[Analysis], accuracy: Optional[Dict[str, Any]]) -> str:
    parts = []
    if len(analyses) > 1:
        entries = [(f"{x.recipe.get('name')}", x.output["sqnr_db"]) for x in analyses]
        parts.append(_img(plots.recipe_chart(entries, "model output SQNR vs float (dB), higher is better"),
                          "model output SQNR per recipe"))
        parts.append(_table(["recipe", "output SQNR (dB)", "output MSE", "cosine", "layers"],
                            [[x.recipe.get("name"), _fmt(x.output["sqnr_db"]), _fmt(x.output["mse"]),
                              _fmt(x.output["cosine"], 6), len(x.layers)] for x in analyses], numeric=(1, 2, 3, 4)))
    if accuracy is not None:
        entries = list(accuracy["results"].items())
        parts.append(_img(plots.recipe_chart(entries, accuracy["metric"]), f"{accuracy['metric']} per recipe"))
        if accuracy.get("source"):
            parts.append(f"<p class=\"note\">{html.escape(str(accuracy['source']))}</p>")
    if not parts:
        return ""
    return "<h2>Accuracy per recipe</h2>" + "".join(parts)


def _layers_table(a: Analysis, worst: int) -> str:
    rows = []
    for r in _ranked(a.layers):
        rows.append([
            r.layer, r.weight_name, "x".join(map(str, r.shape)), f"{r.weight_format}/{r.granularity}",
            r.act_format or "float", _fmt(r.sensitivity_sqnr_db), _fmt(r.sensitivity_mse), _fmt(r.output_sqnr_db),
            _fmt(r.output_mse), _fmt(r.weight_sqnr_db), _fmt(r.local_rel_error),
            "" if r.shift_range is None else f"{r.shift_range[0]}..{r.shift_range[1]}",
            f"{r.act_hist.beyond_grid:.2%}" if r.act_hist.grid is not None else "",
        ])
    header = ["layer", "weight", "shape", "weight fmt", "act fmt", "sensitivity SQNR dB", "sensitivity MSE",
              "output SQNR dB", "output MSE", "weight SQNR dB", "local rel. err", "shift k", "act. clipped"]
    return _table(header, rows, numeric=tuple(range(5, 11)) + (12,), highlight=range(min(worst, len(rows))))


def _float_section(a: Analysis) -> str:
    parts = ["<h2>What stays float, and why</h2>"]
    if a.kept_float:
        parts.append("<p>Linear layers the recipe left in float:</p>")
        parts.append(_table(["layer", "why"], sorted(a.kept_float.items())))
    else:
        parts.append("<p>The recipe quantized every linear layer.</p>")
    if a.float_ops:
        parts.append("<p>Other operations of the float graph, by reason:</p>")
        parts.append(_table(["reason", "nodes", "examples"],
                            [[reason, count, ", ".join(names)] for reason, count, names in a.float_ops],
                            numeric=(1,)))
    return "".join(parts)


def render_html(
    analysis: Analysis,
    comparisons: Sequence[Analysis] = (),
    accuracy: Optional[Dict[str, Any]] = None,
    max_histograms: int = 48,
    worst: int = 5,
) -> str:
    """The report page for ``analysis``; ``comparisons`` are other recipes' analyses of the
    same model on the same inputs, ``accuracy`` a ``{"metric": str, "results": {label: value}}``
    table measured elsewhere (a benchmark's task accuracy)."""
    a = analysis
    for other in comparisons:
        if other.inputs.get("fingerprint") != a.inputs.get("fingerprint"):
            raise ValueError(
                f"the analysis of {other.recipe.get('name')} ({other.source}) was measured on other inputs than "
                f"that of {a.recipe.get('name')} ({a.source}); quantize both with the same --calib data"
            )
    title = f"bitfold report: {a.source} · {a.recipe.get('name')}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class=\"sub\">bitfold {html.escape(bitfold.__version__)}</p>", _summary(a),
            _recipes_section([a, *comparisons], accuracy)]
    sensitivity = any(r.sensitivity_sqnr_db is not None for r in a.layers)
    body.append("<h2>Per-layer error</h2>")
    body.append(_img(plots.error_chart(a.layers, worst), "per-layer error"))
    body.append(
        "<p class=\"note\">Top: SQNR = 10·log10(Σy² / Σ(ŷ−y)²) of each layer's output inside the quantized "
        "model (errors of earlier layers included). "
        + ("Bottom: the model output's SQNR when only that layer is quantized; the red bars are the layers "
           "that cost most. " if sensitivity else "Sensitivity was not measured (quantized with it off). ")
        + f"Measured on up to {a.inputs.get('max_rows')} token rows per batch.</p>")
    body.append("<h2>Layers, most costly first</h2>")
    body.append(_layers_table(a, worst))
    body.append(_float_section(a))
    shown = _ranked(a.layers)[:max_histograms]
    order = {r.layer: i for i, r in enumerate(a.layers)}
    shown.sort(key=lambda r: order[r.layer])
    note = ("" if len(shown) == len(a.layers) else
            f" Showing the {len(shown)} most costly of {len(a.layers)} layers, in graph order.")
    for kind, heading in (("weight", "Weight histograms"), ("act", "Activation histograms")):
        body.append(f"<h2>{heading}</h2><p class=\"note\">In units of the quantizer's scale; red lines are "
                    f"the format's grid points, so the spread shows how the values use the grid.{note}</p>")
        body.extend(_img(png, heading) for png in plots.histogram_pages(shown, kind))
    if a.shifts:
        body.append("<h2>LLM-FP4 pre-shifted exponent bias</h2><p class=\"note\">Per input channel j, the "
                    "integer shift k_j (bars) that multiplies x_j by 2^k_j before the per-tensor quantizer, "
                    "and log2 max|x_j| (line) on the evaluation inputs: small channels get larger k.</p>")
        body.extend(_img(png, "exponent shifts") for png in plots.shift_pages(a.shifts))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def check_accuracy_table(data: Any, where: str) -> Dict[str, Any]:
    """Validate ``{"metric": str, "results": {label: number}}`` (plus an optional ``source``)."""
    if not isinstance(data, dict) or not isinstance(data.get("metric"), str):
        raise ValueError(f"{where}: expected an object with a \"metric\" name and \"results\"")
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{where}: \"results\" must map each recipe to a number")
    for label, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: result {label!r} is {value!r}, not a finite number")
    return data


def write_html(
    analysis: Analysis,
    path: "os.PathLike[str] | str",
    comparisons: Sequence[Analysis] = (),
    accuracy: Optional[Dict[str, Any]] = None,
    max_histograms: int = 48,
) -> Tuple[str, int]:
    """Render and write the report atomically; returns the path and its size in bytes."""
    text = render_html(analysis, comparisons, accuracy, max_histograms)
    path = os.fspath(path)
    write_atomically(path, text)
    return path, len(text.encode("utf-8"))
