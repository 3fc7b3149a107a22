"""The per-layer report: which layer lost accuracy, and why a layer stayed float.

* :func:`float_reference` rebuilds the float graph :func:`bitfold.quantize` started from;
* :func:`analyze` measures every quantized layer against it (error, sensitivity,
  histograms, LLM-FP4 shifts) into an :class:`Analysis`, which saves as ``analysis.json``;
* :func:`write_html` renders analyses as one self-contained HTML page with PNG plots.

    q = bitfold.quantize(model, "w4a4-fp", calib)
    a = analyze(float_reference(model, calib, q.recipe["calibration_samples"]), q, eval_inputs)
    write_html(a, "report.html")
"""

from bitfold.api.report.analysis import ANALYSIS_FILE, Analysis, analyze
from bitfold.api.report.html import check_accuracy_table, render_html, write_html
from bitfold.api.report.layers import AnalysisError, match_layers
from bitfold.api.report.reference import float_reference

__all__ = [
    "ANALYSIS_FILE", "Analysis", "AnalysisError", "analyze", "check_accuracy_table", "float_reference", "match_layers",
    "render_html", "write_html",
]
