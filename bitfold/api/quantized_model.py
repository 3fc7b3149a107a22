"""The result of :func:`bitfold.quantize`: a runnable quantized graph plus what was chosen."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import torch
from torch import fx

from bitfold.api.plan import LayerReport
from bitfold.ir.graph_utils import attr_value
from bitfold.ir.serialize import load_graph, read_extra_meta, save_graph


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3g}"


#: Quantized weight ops → positions of (out_features, in_features) and of the stored weight
#: tensors by role. Biases and activation shifts are not weight storage and are not counted.
_WEIGHT_ARGS = {
    torch.ops.bitfold.quantized_linear.default: ((3, 4), {"codes": (1,), "scales": (5, 7)}),
    torch.ops.bitfold.codebook_linear.default: ((4, 5), {"codes": (1,), "cluster_ids": (2,), "scales": (7, 9)}),
    torch.ops.bitfold.quantized_embedding.default: ((3, 4), {"codes": (1,), "scales": (5, 7)}),
    torch.ops.bitfold.quantized_conv2d.default: ((3, 4), {"codes": (1,), "scales": (5, 7)}),
}


def weight_memory(gm: fx.GraphModule) -> Dict[str, Any]:
    """Bits per weight of every quantized layer and of all of them together, as stored.

    Counts the bytes of each layer's packed codes, packed cluster ids (SplitQuant), scales
    and zero points (``scales`` covers both), divided by the layer's number of weights, so
    recipes compare at equal memory. Keyed by the quantized node's name.
    """
    layers: Dict[str, Any] = {}
    for node in gm.graph.nodes:
        spec = _WEIGHT_ARGS.get(node.target) if node.op == "call_function" else None
        if spec is None:
            continue
        (n_pos, k_pos), roles = spec
        weights = int(node.args[n_pos]) * int(node.args[k_pos])
        bits = {}
        for role, positions in roles.items():
            values = [attr_value(gm, node.args[p]) for p in positions if len(node.args) > p]
            bits[role] = sum(8 * v.numel() * v.element_size() for v in values if v is not None)
        layers[node.name] = {"weights": weights, "bits": bits,
                             "bits_per_weight": round(sum(bits.values()) / weights, 4)}
    total_weights = sum(r["weights"] for r in layers.values())
    total_bits = sum(sum(r["bits"].values()) for r in layers.values())
    return {"layers": layers, "quantized_weights": total_weights,
            "bits_per_weight": round(total_bits / total_weights, 4) if total_weights else None}


class QuantizedModel:
    """A quantized model: call it like the original (simulated in PyTorch), inspect, save."""

    def __init__(
        self,
        graph_module: fx.GraphModule,
        recipe: Dict[str, Any],
        layers: List[LayerReport],
        kept_float: Dict[str, str],
        info: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.graph_module = graph_module
        self.recipe = recipe
        self.layers = layers
        self.kept_float = kept_float
        self.info = info or {}

    def __call__(self, *inputs: Any) -> Any:
        with torch.no_grad():
            return self.graph_module(*inputs)

    def manifest(self) -> Dict[str, Any]:
        """JSON-ready: the recipe, per layer what was chosen, and what stayed float and why."""
        return {
            "recipe": self.recipe,
            "layers": [dataclasses.asdict(r) for r in self.layers],
            "kept_float": self.kept_float,
            "info": self.info,
            "memory": weight_memory(self.graph_module),
        }

    def save(self, directory: Any, overwrite: bool = False) -> None:
        """Write the artifact: ``graph.json`` + ``tensors.safetensors`` (packed weights and
        scales) with this model's :meth:`manifest` inside; written atomically, no pickle."""
        save_graph(self.graph_module, directory, extra_meta=self.manifest(), overwrite=overwrite)

    @classmethod
    def load(cls, directory: Any) -> "QuantizedModel":
        """Read an artifact written by :meth:`save` (never unpickles)."""
        manifest = read_extra_meta(directory)
        if not isinstance(manifest, dict) or "layers" not in manifest:
            raise ValueError(f"{directory}: not a bitfold quantized model (no layer manifest)")
        layers = [LayerReport(**{**row, "shape": tuple(row["shape"]),
                                 "shift_range": None if row["shift_range"] is None else tuple(row["shift_range"])})
                  for row in manifest["layers"]]
        return cls(load_graph(directory), manifest["recipe"], layers, manifest["kept_float"], manifest.get("info"))

    def report(self) -> str:
        """A readable table: per layer the formats, activation scale, shifts and output error."""
        header = ["layer", "weight", "shape", "w fmt", "a fmt", "a scale", "shift k", "out err", "s"]
        rows = [[
            r.layer, r.weight_name, "x".join(map(str, r.shape)), f"{r.weight_format}/{r.granularity}",
            r.act_format or "float", _fmt(r.act_scale),
            "" if r.shift_range is None else f"{r.shift_range[0]}..{r.shift_range[1]}",
            _fmt(r.output_rel_error), f"{r.seconds:.2f}",
        ] for r in self.layers]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        out = [f"recipe {self.recipe.get('name')} (v{self.recipe.get('version')}): "
               f"{len(self.layers)} layers quantized, {len(self.kept_float)} layers kept float",
               line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
        for name, why in self.kept_float.items():
            out.append(f"float: {name}: {why}")
        memory = weight_memory(self.graph_module)
        if memory["quantized_weights"]:
            out.append(f"weights: {memory['bits_per_weight']:.3f} bits/weight over {memory['quantized_weights']:,} "
                       "quantized weights (codes, cluster ids, scales and zero points as stored)")
        return "\n".join(out)
