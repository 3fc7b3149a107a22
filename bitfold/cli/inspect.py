"""``bitfold inspect MODEL_OR_DIR``: what a model holds, and what quantization does to it.

For a model (ONNX file, bundled name, ``module:factory``): the canonical graph's op counts,
its quantizable layers, every other op with the reason it stays float, the rewrite rules
that declined a match and why, and with ``--recipe`` which linears that recipe would
quantize or keep float. For a quantized OUT_DIR: the format, scales / exponent biases and
pre-shifts chosen per layer, the layers kept float and why, and the graph summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

from bitfold.cli.data import DATA_HELP, load_data
from bitfold.cli.errors import CLIError
from bitfold.cli.models import MODEL_HELP, resolve_model
from bitfold.cli.parsing import add_command
from bitfold.cli.tables import format_table

EXAMPLES = """\
examples:
  bitfold inspect minilm
  bitfold inspect minilm --recipe w4a4-int
  bitfold inspect model.onnx
  bitfold inspect mypkg.models:build --calib inputs/
  bitfold inspect /tmp/q                      # an OUT_DIR of `bitfold quantize`
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "inspect",
                    "show a model's layers, what stays float and why, or a quantized model's choices", __doc__, EXAMPLES)
    p.add_argument("target", metavar="MODEL_OR_DIR", help=f"{MODEL_HELP}; or an OUT_DIR of `bitfold quantize`")
    p.add_argument("-r", "--recipe", metavar="NAME|FILE.yaml", help="also show which linears this recipe quantizes")
    p.add_argument("-c", "--calib", metavar="DATA",
                   help=f"inputs for a module:factory without example inputs: {DATA_HELP}")
    p.set_defaults(run=run)


def _range(values, fmt: str = "{:.3g}") -> str:
    lo, hi = float(values.min()), float(values.max())
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}..{fmt.format(hi)}"


def _scale_text(fmt_name: str, scale) -> str:
    """For FP formats the exponent bias ``b̃ = bias - log2(scale)`` the scale stands for; else the scale."""
    import torch

    from bitfold.ir import formats

    if scale is None:
        return "per block"
    f = formats.get(fmt_name)
    if isinstance(f, formats.FloatFormat):
        return "bias " + _range(f.bias - torch.log2(scale.double()), "{:.2f}")
    return "scale " + _range(scale)


def _rule_notes(gm, limit: int = 20) -> List[str]:
    notes = [(n.name, why) for n in gm.graph.nodes for why in n.meta.get("bitfold_why", [])]
    if not notes:
        return []
    lines = ["", f"rewrite rules that declined a match ({len(notes)}):"]
    lines += [f"  {name}: {why}" for name, why in notes[:limit]]
    if len(notes) > limit:
        lines.append(f"  … {len(notes) - limit} more")
    return lines


def _inspect_quantized(directory: Path) -> str:
    import torch

    from bitfold.api.report.layers import FAKE_QUANTIZE, is_quantized_linear, layer_name, weight_view
    from bitfold.cli.artifact import load_quantized
    from bitfold.ir import summarize
    from bitfold.ir.graph_utils import attr_value

    q = load_quantized(str(directory))
    gm = q.graph_module
    rows = []
    for node in gm.graph.nodes:
        if not is_quantized_linear(node):
            continue
        view = weight_view(gm, node)
        x = node.args[0]
        act, act_scale = "float", ""
        if isinstance(x, torch.fx.Node) and x.target == FAKE_QUANTIZE:
            act = x.args[1]
            act_scale = _scale_text(act, attr_value(gm, x.args[2]) if len(x.args) > 2 else None)
        rows.append([layer_name(node), f"{view.out_features}x{view.in_features}", view.layout,
                     _scale_text(view.quantizer.fmt, view.quantizer.scale), act, act_scale,
                     "" if view.shift is None else _range(view.shift, "{:.0f}")])
    recipe = q.recipe
    lines = [f"quantized model in {directory}: recipe {recipe.get('name')} (v{recipe.get('version')}) — "
             f"{recipe.get('description')}", "",
             f"quantized layers ({len(rows)}): formats, and the exponent bias (FP) or scale (INT) per channel/group"]
    lines += format_table(["layer", "shape", "weight", "weight bias/scale", "act", "act bias/scale", "shift k"], rows)
    lines += ["", f"layers kept float ({len(q.kept_float)}):"]
    lines += [f"  {name}: {why}" for name, why in q.kept_float.items()] or ["  none"]
    lines += ["", summarize(gm)]
    lines += _rule_notes(gm)
    return "\n".join(lines)


def _other_quantizable(gm) -> List[Tuple[str, str]]:
    """(name, kind) of the quantizable layers that no recipe quantizes yet (activation matmuls)."""
    from bitfold.ir.quantizable import classify

    found = []
    for node in gm.graph.nodes:
        decision = classify(gm, node) if node.op == "call_function" else None
        if decision is not None and decision.quantizable and decision.kind not in ("linear", "conv", "embedding",
                                                                                   "quantized"):
            found.append((node.name, decision.kind))
    return found


def _inspect_model(args: argparse.Namespace) -> str:
    from bitfold.api.plan import select_layers
    from bitfold.ir import from_onnx, from_torch, summarize
    from bitfold.passes import run_standard_passes

    source = resolve_model(args.target)
    example = source.example_inputs
    if args.calib is not None:
        example = load_data(args.calib, source, samples=1, eval_samples=1, batch_size=1).items[0]
    if source.is_onnx:
        gm = from_onnx(source.model)
    else:
        if example is None:
            raise CLIError(f"{source.label}: give --calib DATA (or return (module, example_inputs) from the factory) "
                           "so the model can be captured")
        gm = from_torch(source.model, tuple(example))
    run_standard_passes(gm, sample_inputs=example)
    lines = [f"model {source.label}", "", summarize(gm)]
    lines += _rule_notes(gm)
    if args.recipe is not None:
        from bitfold.recipes import load_recipe

        recipe = load_recipe(args.recipe)
        chosen, skipped = select_layers(gm, recipe)
        others = _other_quantizable(gm)
        lines += ["", f"recipe {recipe.name}: quantizes {len(chosen)} linear/conv layer(s), keeps {len(skipped)} float"
                      + (f"; {len(others)} other quantizable layer(s) stay float" if others else "")]
        lines += [f"  float: {name}: {why}" for name, why in skipped.items()]
        lines += [f"  float: {name} ({kind}): bitfold.quantize does not quantize {kind} layers yet"
                  for name, kind in others]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path = Path(args.target)
    if path.is_dir():
        print(_inspect_quantized(path))
    else:
        print(_inspect_model(args))
    return 0
