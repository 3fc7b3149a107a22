"""What a low-bit linear kernel computes, read off a ``bitfold::quantized_linear`` node.

A :class:`LinearKernelSpec` fixes everything that shapes the generated code: the weight
format, ``N`` and ``K``, the scale granularity, which optional operands exist, and the
activation dtype. Tensors (codes, scales, …) are not part of it; two layers with equal
specs share one compiled kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import fx

from bitfold.ir import formats


class KernelError(ValueError):
    """A layer, format, shape or target that the kernel generators cannot take."""


#: Argument names of ``bitfold::quantized_linear``, in schema order.
QUANTIZED_LINEAR_ARGS = (
    "x", "packed_weight", "fmt", "out_features", "in_features", "weight_scale",
    "group_size", "weight_zero_point", "input_shift", "bias",
)
ACT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class LinearKernelSpec:
    """The static description of one quantized linear layer ``y = (x·2^-k) Ŵᵀ + b``.

    ``Ŵ[n, j] = decode(code[n, j]) · scale[n, g(j)]`` (minus a zero point for integer
    formats), with ``g(j) = j // group_size``, or one scale per row when ``group_size`` is
    ``None``.

    Two CPU variants trade float activations for int8 arithmetic: ``int8_activations``
    (activations quantized per block of 32, ``vpmaddubsw``; :mod:`~bitfold.codegen.cpu_int8`)
    and ``lookup_tables`` (T-MAC's bit-plane table lookups, ``vpshufb``;
    :mod:`~bitfold.codegen.cpu_lut`).
    """

    weight_format: str
    out_features: int
    in_features: int
    group_size: Optional[int]
    has_zero_point: bool
    has_shift: bool
    has_bias: bool
    act_dtype: str = "float32"
    int8_activations: bool = False
    lookup_tables: bool = False

    def __post_init__(self) -> None:
        try:
            fmt = formats.get(self.weight_format)
        except formats.FormatError as err:
            raise KernelError(f"kernel spec: {err}") from None
        if self.out_features <= 0 or self.in_features <= 0:
            raise KernelError(
                f"kernel spec: shape {self.out_features}x{self.in_features} (N x K) must be positive"
            )
        if self.group_size is not None and self.group_size <= 0:
            raise KernelError(f"kernel spec: group_size must be positive, got {self.group_size}")
        if self.has_zero_point and not fmt.supports_zero_point:
            raise KernelError(f"kernel spec: format {fmt.name} takes no zero point")
        if self.int8_activations and self.lookup_tables:
            raise KernelError("kernel spec: choose int8 activations or lookup tables, not both")
        if self.act_dtype not in ACT_DTYPES:
            raise KernelError(
                f"kernel spec: activation dtype {self.act_dtype!r} is not supported; use one of {ACT_DTYPES}"
            )

    @property
    def format(self) -> formats.Format:
        return formats.get(self.weight_format)

    @property
    def groups(self) -> int:
        """Number of scale groups along K (1 for per-channel scales)."""
        if self.effective_group_size is None:
            return 1
        return -(-self.in_features // self.effective_group_size)

    @property
    def effective_group_size(self) -> Optional[int]:
        """The group size the weight was encoded with (a block format's block size)."""
        fmt = self.format
        if isinstance(fmt, formats.BlockFormat):
            return fmt.block_size
        return self.group_size

    def describe(self) -> str:
        gran = "per-channel" if self.effective_group_size is None else f"group {self.effective_group_size}"
        extras = [name for name, on in (("zero point", self.has_zero_point), ("shift", self.has_shift),
                                        ("bias", self.has_bias), ("int8 activations", self.int8_activations),
                                        ("lookup tables", self.lookup_tables)) if on]
        return (f"{self.weight_format} {self.out_features}x{self.in_features} ({gran}"
                + "".join(f", {e}" for e in extras) + f", {self.act_dtype} activations)")


def quantized_linear_args(node: fx.Node) -> Dict[str, Any]:
    """The arguments of a ``bitfold::quantized_linear`` node by schema name (defaults filled)."""
    if node.op != "call_function" or node.target is not torch.ops.bitfold.quantized_linear.default:
        raise KernelError(
            f"node {node.name}: expected a call to bitfold::quantized_linear, got {node.op} {node.target}")
    if len(node.args) > len(QUANTIZED_LINEAR_ARGS):
        raise KernelError(f"node {node.name}: bitfold::quantized_linear takes {len(QUANTIZED_LINEAR_ARGS)} arguments")
    values: Dict[str, Any] = dict.fromkeys(QUANTIZED_LINEAR_ARGS[6:])
    values.update(zip(QUANTIZED_LINEAR_ARGS, node.args))
    unknown = set(node.kwargs) - set(QUANTIZED_LINEAR_ARGS)
    if unknown:
        raise KernelError(f"node {node.name}: unknown arguments {sorted(unknown)} for bitfold::quantized_linear")
    values.update(node.kwargs)
    missing = [name for name in QUANTIZED_LINEAR_ARGS[:6] if name not in values]
    if missing:
        raise KernelError(f"node {node.name}: bitfold::quantized_linear is missing {missing}")
    return values


def _act_dtype(node: fx.Node, x: Any) -> str:
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    dtype = getattr(val, "dtype", torch.float32)
    names = {torch.float32: "float32", torch.float16: "float16"}
    if dtype not in names:
        raise KernelError(f"node {node.name}: activations of dtype {dtype} are not supported (float32 or float16)")
    return names[dtype]


def spec_from_node(node: fx.Node) -> LinearKernelSpec:
    """The :class:`LinearKernelSpec` of a ``bitfold::quantized_linear`` call node (float
    activations; the int8 variants are a ``dataclasses.replace`` away)."""
    args = quantized_linear_args(node)
    try:
        return LinearKernelSpec(
            weight_format=formats.get(args["fmt"]).name,
            out_features=int(args["out_features"]),
            in_features=int(args["in_features"]),
            group_size=None if args["group_size"] is None else int(args["group_size"]),
            has_zero_point=args["weight_zero_point"] is not None,
            has_shift=args["input_shift"] is not None,
            has_bias=args["bias"] is not None,
            act_dtype=_act_dtype(node, args["x"]),
        )
    except (KernelError, formats.FormatError) as err:
        raise KernelError(f"node {node.name}: {err}") from None
