"""bitfold's custom operators, registered with ``torch.library`` in the ``bitfold`` namespace.

They are the vocabulary every pass and backend speaks. Each has an eager implementation
(built on :mod:`bitfold.ir.formats`) and a fake implementation, so a graph holding them
traces through ``torch.export`` and runs in eager mode.

``bitfold::fake_quantize(x, fmt, scale, axis, group_size, zero_point) -> Tensor``
    ``fmt.quantize(x, scale, axis, group_size, zero_point)``. ``scale=None`` is allowed for
    block formats (MX, NVFP4), whose block scales are computed from ``x`` at run time.

``bitfold::quantized_linear(x, packed_weight, fmt, out_features, in_features, weight_scale,
group_size, weight_zero_point, input_shift, bias) -> Tensor``
    ``y = (x · 2^-input_shift) @ Ŵᵀ + bias`` with ``Ŵ = decode(unpack(packed_weight))``, an
    ``[out_features, in_features]`` matrix whose codes are packed row-major by
    :func:`bitfold.ir.formats.pack`. ``weight_scale`` is per output channel (shape ``[N]``)
    or, with ``group_size``, per group of input channels (shape ``[N, ceil(K / group_size)]``).
    ``input_shift`` (integers, shape ``[K]``) is LLM-FP4's pre-shifted exponent bias: the
    activation's channel ``j`` arrives multiplied by ``2^k_j`` and weight column ``j`` carries
    the compensating ``2^-k_j``, applied exactly on the activation side (O(K) work).

``bitfold::quantized_conv2d(x, packed_weight, fmt, out_channels, in_features, weight_scale,
group_size, weight_zero_point, input_shift, bias, kernel_size, stride, padding, dilation, groups)``
    ``y = conv2d(x · 2^-input_shift, Ŵ, bias, stride, padding, dilation, groups)`` (NCHW). The
    weight is stored like a quantized linear's: ``Ŵ`` decodes to ``[out_channels, in_features]``
    with ``in_features = C_in/groups · kh · kw`` (the OIHW weight flattened per output channel,
    the matrix an im2col GEMM multiplies), then is viewed as ``[out_channels, C_in/groups, kh,
    kw]``. ``input_shift`` is per input channel (shape ``[C_in]``), as for linears. The first
    ten arguments mean what they mean for ``quantized_linear``, so readers of the weight
    (memory, reports, exporters) treat both alike.

``bitfold::fused_linear(x, weight, bias, activation)`` and ``bitfold::fused_conv2d(x, weight,
bias, stride, padding, dilation, groups, activation)``
    A linear / 2-D convolution with its bias and elementwise activation (``relu``, ``gelu``,
    ``silu``…, or ``none``) in one node: the pattern that backends lower to one kernel.

``bitfold::codebook_linear(x, packed_codes, packed_ids, fmt, out_features, in_features,
clusters, weight_scale, group_size, weight_zero_point, input_shift, bias) -> Tensor``
    A SplitQuant layer in one GEMM: ``y = (x · 2^-input_shift) @ Ŵᵀ + bias`` where every
    weight element carries a ``fmt`` code and a cluster id ``c`` (``ceil(log2 clusters)``
    bits, packed like the codes) and decodes with its cluster's scale and zero point::

        Ŵ[n, j] = decode(code[n, j]; weight_scale[c, n, g(j)], weight_zero_point[c, n, g(j)])

    ``weight_scale`` is ``[clusters, N]`` (per output channel) or ``[clusters, N,
    ceil(K / group_size)]``; ``g(j) = j // group_size``. This equals the sum of the
    ``clusters`` layers SplitQuant would run, ``Σ_c x @ Ŵ_cᵀ``, whenever each cluster's
    quantizer maps the zeros outside the cluster to zero — at a third of the GEMMs and with
    one weight matrix of ``bits + ceil(log2 clusters)`` bits per element instead of
    ``clusters`` matrices of ``bits``.

``bitfold::quantized_embedding(indices, packed_weight, fmt, num_embeddings, embedding_dim,
weight_scale, group_size, weight_zero_point) -> Tensor``
    ``Ŵ[indices]``: an embedding table stored like a quantized linear's weight (rows are
    ``num_embeddings``, scales per row or per group of ``group_size`` columns), weight-only.

``bitfold::gelu(x, approximate) -> Tensor``
    GELU spelled without float32 cancellation, step for step the same in every backend
    (:mod:`bitfold.ir.stable_gelu`); used where a GELU output is quantized.

``bitfold::hadamard(x, block) -> Tensor``
    ``x`` rotated by a block-diagonal Hadamard matrix along its last axis, as butterfly
    steps that every backend repeats exactly (:mod:`bitfold.ir.hadamard`); inserted by
    :mod:`bitfold.passes.rotate_inputs` in front of layers whose weights were counter-rotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from bitfold.ir import formats
from bitfold.ir.formats import BlockFormat, Format
from bitfold.ir.hadamard import hadamard  # noqa: F401  (registers bitfold::hadamard)
from bitfold.ir.stable_gelu import gelu  # noqa: F401  (registers bitfold::gelu)


@dataclass(frozen=True)
class PackedWeight:
    """A linear layer's weight in a low-bit format: packed codes plus their scales."""

    packed: torch.Tensor
    fmt: str
    out_features: int
    in_features: int
    scale: torch.Tensor
    group_size: Optional[int] = None
    zero_point: Optional[torch.Tensor] = None

    def unpack(self) -> torch.Tensor:
        """The dequantized ``[out_features, in_features]`` float32 weight."""
        return unpack_weight(
            self.packed, self.fmt, self.out_features, self.in_features, self.scale, self.group_size, self.zero_point
        )


def weight_layout(fmt: Format, group_size: Optional[int]) -> dict:
    """The ``axis`` and ``group_size`` a ``[N, K]`` weight's scales are laid out along: per
    output channel, per group of ``group_size`` inputs, or per block of a block format."""
    if isinstance(fmt, BlockFormat):
        return {"axis": 1, "group_size": fmt.block_size}
    if group_size is None:
        return {"axis": 0, "group_size": None}
    return {"axis": 1, "group_size": group_size}


def weight_granularity(fmt: Format, group_size: Optional[int]) -> str:
    """How a weight's scales are laid out, as reports write it: ``channel``, ``group<g>`` or
    ``block<B>`` (a block format's own blocks)."""
    if isinstance(fmt, BlockFormat):
        return f"block{fmt.block_size}"
    return f"group{group_size}" if group_size else "channel"


def pack_weight(
    weight: torch.Tensor,
    fmt: str,
    scale: torch.Tensor,
    group_size: Optional[int] = None,
    zero_point: Optional[torch.Tensor] = None,
    name: str = "weight",
) -> PackedWeight:
    """Encode and pack a ``[N, K]`` weight (per-channel scale ``[N]`` or per-group ``[N, K/g]``)."""
    f = formats.get(fmt)
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D [out_features, in_features] weight, got shape {tuple(weight.shape)}")
    codes = f.encode(weight, scale, zero_point=zero_point, name=name, **weight_layout(f, group_size))
    return PackedWeight(
        formats.pack(codes, f.bits), f.name, weight.shape[0], weight.shape[1],
        torch.as_tensor(scale, dtype=torch.float32), group_size, zero_point,
    )


def unpack_weight(
    packed: torch.Tensor,
    fmt: str,
    out_features: int,
    in_features: int,
    scale: torch.Tensor,
    group_size: Optional[int] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The float32 ``[out_features, in_features]`` weight held by ``packed``."""
    f = formats.get(fmt)
    codes = formats.unpack(packed, f.bits, out_features * in_features).reshape(out_features, in_features)
    return f.decode(codes, scale, zero_point=zero_point, **weight_layout(f, group_size))


@torch.library.custom_op("bitfold::fake_quantize", mutates_args=())
def fake_quantize(
    x: torch.Tensor,
    fmt: str,
    scale: Optional[torch.Tensor] = None,
    axis: Optional[int] = None,
    group_size: Optional[int] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    f = formats.get(fmt)
    if scale is None and not isinstance(f, BlockFormat):
        raise ValueError(f"bitfold::fake_quantize: format {f.name} needs a scale (only block formats compute their own)")
    if isinstance(f, BlockFormat):
        return f.quantize(x, scale, -1 if axis is None else axis, group_size, zero_point)
    return f.quantize(x, scale, axis, group_size, zero_point)


@fake_quantize.register_fake
def _(x, fmt, scale=None, axis=None, group_size=None, zero_point=None):
    return torch.empty_like(x)


@torch.library.custom_op("bitfold::quantized_linear", mutates_args=())
def quantized_linear(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    fmt: str,
    out_features: int,
    in_features: int,
    weight_scale: torch.Tensor,
    group_size: Optional[int] = None,
    weight_zero_point: Optional[torch.Tensor] = None,
    input_shift: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"bitfold::quantized_linear: input has {x.shape[-1]} features, the weight expects {in_features}"
        )
    w = unpack_weight(packed_weight, fmt, out_features, in_features, weight_scale, group_size, weight_zero_point)
    xf = x.to(torch.float32)
    if input_shift is not None:
        xf = torch.ldexp(xf, -input_shift.to(device=x.device, dtype=torch.int32))
    y = torch.nn.functional.linear(xf, w.to(x.device), None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype)


@quantized_linear.register_fake
def _(x, packed_weight, fmt, out_features, in_features, weight_scale, group_size=None,
      weight_zero_point=None, input_shift=None, bias=None):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("bitfold::quantized_conv2d", mutates_args=())
def quantized_conv2d(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    fmt: str,
    out_channels: int,
    in_features: int,
    weight_scale: torch.Tensor,
    group_size: Optional[int],
    weight_zero_point: Optional[torch.Tensor],
    input_shift: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
) -> torch.Tensor:
    kh, kw = kernel_size
    channels = x.shape[1] if x.dim() == 4 else -1
    if x.dim() != 4 or channels % groups or (channels // groups) * kh * kw != in_features:
        raise ValueError(
            f"bitfold::quantized_conv2d: input of shape {tuple(x.shape)} does not fit a weight of "
            f"{in_features} features per output channel (kernel {kh}x{kw}, groups {groups})"
        )
    w = unpack_weight(packed_weight, fmt, out_channels, in_features, weight_scale, group_size, weight_zero_point)
    xf = x.to(torch.float32)
    if input_shift is not None:
        xf = torch.ldexp(xf, -input_shift.to(device=x.device, dtype=torch.int32).reshape(1, -1, 1, 1))
    y = torch.nn.functional.conv2d(xf, w.to(x.device).reshape(out_channels, channels // groups, kh, kw),
                                   None if bias is None else bias.to(torch.float32), stride, padding, dilation, groups)
    return y.to(x.dtype)


@quantized_conv2d.register_fake
def _(x, packed_weight, fmt, out_channels, in_features, weight_scale, group_size, weight_zero_point, input_shift,
      bias, kernel_size, stride, padding, dilation, groups):
    return x.new_empty(conv2d_output_shape(x.shape, out_channels, kernel_size, stride, padding, dilation))


def conv2d_output_shape(shape, out_channels: int, kernel_size, stride, padding, dilation) -> tuple:
    """The NCHW output shape of a 2-D convolution of an input of ``shape``."""
    n, _, h, w = shape
    oh = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return (n, out_channels, oh, ow)


def _apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    fn = _ACTIVATIONS.get(activation)
    if fn is None:
        raise ValueError(f"unknown fused activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return fn(y)


_ACTIVATIONS = {
    "none": lambda y: y,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda y: torch.nn.functional.gelu(y, approximate="tanh"),
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": torch.nn.functional.hardswish,
    "hardsigmoid": torch.nn.functional.hardsigmoid,
    "relu6": torch.nn.functional.relu6,
}
FUSABLE_ACTIVATIONS = tuple(sorted(_ACTIVATIONS))


@torch.library.custom_op("bitfold::fused_linear", mutates_args=())
def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    """``activation(x @ weightᵀ + bias)``: the linear pattern backends consume."""
    return _apply_activation(torch.nn.functional.linear(x, weight, bias), activation)


@fused_linear.register_fake
def _(x, weight, bias, activation):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("bitfold::fused_conv2d", mutates_args=())
def fused_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    activation: str,
) -> torch.Tensor:
    """``activation(conv2d(x, weight, bias, ...))``: the conv pattern backends consume."""
    y = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _apply_activation(y, activation)


@fused_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, activation):
    return x.new_empty(conv2d_output_shape(x.shape, weight.shape[0], weight.shape[2:], stride, padding, dilation))


def cluster_id_bits(clusters: int) -> int:
    """Bits per cluster id in a codebook weight: ``ceil(log2 clusters)``, at least 1."""
    if not 2 <= clusters <= 256:
        raise ValueError(f"a codebook weight has 2 to 256 clusters, got {clusters}")
    return max(1, (clusters - 1).bit_length())


@dataclass(frozen=True)
class CodebookWeight:
    """A SplitQuant weight in codebook form: packed codes, packed cluster ids, per-cluster scales."""

    packed_codes: torch.Tensor
    packed_ids: torch.Tensor
    fmt: str
    out_features: int
    in_features: int
    clusters: int
    scale: torch.Tensor
    group_size: Optional[int] = None
    zero_point: Optional[torch.Tensor] = None

    def unpack(self) -> torch.Tensor:
        """The dequantized ``[out_features, in_features]`` float32 weight."""
        return unpack_codebook_weight(
            self.packed_codes, self.packed_ids, self.fmt, self.out_features, self.in_features, self.clusters,
            self.scale, self.group_size, self.zero_point,
        )

    @property
    def combined_bits(self) -> int:
        """Bits of a code and its cluster id together: ``bits + ceil(log2 clusters)``."""
        return formats.get(self.fmt).bits + cluster_id_bits(self.clusters)

    def combined_codes(self) -> torch.Tensor:
        """``[N, K]`` int64 ``id · 2^bits + code``: an element's cluster and code in one number."""
        f = formats.get(self.fmt)
        numel = self.out_features * self.in_features
        codes = formats.unpack(self.packed_codes, f.bits, numel).long()
        ids = formats.unpack(self.packed_ids, cluster_id_bits(self.clusters), numel).long()
        return (ids * 2**f.bits + codes).reshape(self.out_features, self.in_features)

    def value_tables(self) -> torch.Tensor:
        """``[G, 2^combined_bits, N]`` float32: the value of every combined code per group and channel.

        Computed by the format's own decode (``(t[q] − round(z)) · s``, float32), so looking
        up ``combined_codes()`` returns exactly :meth:`unpack` (combined codes whose id is not
        a cluster never occur; their rows repeat the last cluster).
        """
        f = formats.get(self.fmt)
        n, k = self.out_features, self.in_features
        combined = torch.arange(2**self.combined_bits)
        codes, ids = combined % 2**f.bits, (combined // 2**f.bits).clamp(max=self.clusters - 1)
        groups = 1 if self.group_size is None else -(-k // self.group_size)
        s = self.scale.float().reshape(self.clusters, n, groups)[ids].permute(2, 0, 1)
        z = None if self.zero_point is None else \
            self.zero_point.float().reshape(self.clusters, n, groups)[ids].permute(2, 0, 1)
        return f.decode(codes[None, :, None].expand_as(s).to(torch.int32), s, zero_point=z).contiguous()


def _codebook_format(fmt: str) -> Format:
    f = formats.get(fmt)
    if isinstance(f, BlockFormat):
        raise ValueError(
            f"codebook weights take per-channel or per-group scales; {f.name} is a block format whose "
            "scales come from its own blocks"
        )
    return f


def _check_cluster_params(
    scale: torch.Tensor, zero_point: Optional[torch.Tensor], clusters: int, n: int, k: int,
    group_size: Optional[int],
) -> int:
    """The number of scale groups per row; raises when ``scale``/``zero_point`` do not fit."""
    groups = 1 if group_size is None else -(-k // group_size)
    expected = (clusters, n) if group_size is None else (clusters, n, groups)
    if tuple(scale.shape) != expected:
        raise ValueError(f"codebook weight: scale has shape {tuple(scale.shape)}, expected {expected} "
                         f"({clusters} clusters, {n} output channels"
                         + ("" if group_size is None else f", {groups} groups of {group_size}") + ")")
    if zero_point is not None and tuple(zero_point.shape) != expected:
        raise ValueError(f"codebook weight: zero point has shape {tuple(zero_point.shape)}, expected {expected}")
    return groups


def _per_element(values: torch.Tensor, ids: torch.Tensor, groups: int, group_size: Optional[int]) -> torch.Tensor:
    """``values[ids[n, j], n, j // group_size]`` for every element, by one flat gather."""
    n, k = ids.shape
    column = torch.zeros(k, dtype=torch.int64, device=ids.device) if group_size is None else (
        torch.arange(k, device=ids.device) // group_size)
    row = torch.arange(n, device=ids.device)[:, None] * groups
    return values.reshape(-1).to(ids.device)[(ids * n * groups + row) + column]


def codebook_from_codes(
    codes: torch.Tensor,
    ids: torch.Tensor,
    fmt: str,
    scale: torch.Tensor,
    group_size: Optional[int] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> CodebookWeight:
    """Pack ``[N, K]`` format ``codes`` and cluster ``ids`` with per-cluster ``scale`` / ``zero_point``."""
    f = _codebook_format(fmt)
    if codes.dim() != 2 or codes.shape != ids.shape:
        raise ValueError(f"codebook weight: codes {tuple(codes.shape)} and ids {tuple(ids.shape)} must be the same "
                         "[out_features, in_features] shape")
    clusters = scale.shape[0]
    _check_cluster_params(scale, zero_point, clusters, codes.shape[0], codes.shape[1], group_size)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= clusters):
        raise ValueError(f"codebook weight: cluster ids must lie in [0, {clusters - 1}]")
    return CodebookWeight(
        formats.pack(codes, f.bits), formats.pack(ids, cluster_id_bits(clusters)), f.name, codes.shape[0],
        codes.shape[1], clusters, scale.to(torch.float32), group_size,
        None if zero_point is None else zero_point.to(torch.float32),
    )


def unpack_codebook_weight(
    packed_codes: torch.Tensor,
    packed_ids: torch.Tensor,
    fmt: str,
    out_features: int,
    in_features: int,
    clusters: int,
    scale: torch.Tensor,
    group_size: Optional[int] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The float32 ``[out_features, in_features]`` weight of a codebook weight (module docstring)."""
    f = _codebook_format(fmt)
    numel = out_features * in_features
    groups = _check_cluster_params(scale, zero_point, clusters, out_features, in_features, group_size)
    codes = formats.unpack(packed_codes, f.bits, numel).reshape(out_features, in_features)
    ids = formats.unpack(packed_ids, cluster_id_bits(clusters), numel).reshape(out_features, in_features).long()
    if numel and int(ids.max()) >= clusters:
        raise ValueError(f"codebook weight: cluster id {int(ids.max())} out of range for {clusters} clusters")
    s = _per_element(scale.to(torch.float32), ids, groups, group_size)
    z = None if zero_point is None else _per_element(zero_point.to(torch.float32), ids, groups, group_size)
    return f.decode(codes, s, zero_point=z)


@torch.library.custom_op("bitfold::codebook_linear", mutates_args=())
def codebook_linear(
    x: torch.Tensor,
    packed_codes: torch.Tensor,
    packed_ids: torch.Tensor,
    fmt: str,
    out_features: int,
    in_features: int,
    clusters: int,
    weight_scale: torch.Tensor,
    group_size: Optional[int] = None,
    weight_zero_point: Optional[torch.Tensor] = None,
    input_shift: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"bitfold::codebook_linear: input has {x.shape[-1]} features, the weight expects {in_features}"
        )
    w = unpack_codebook_weight(packed_codes, packed_ids, fmt, out_features, in_features, clusters, weight_scale,
                               group_size, weight_zero_point)
    xf = x.to(torch.float32)
    if input_shift is not None:
        xf = torch.ldexp(xf, -input_shift.to(device=x.device, dtype=torch.int32))
    y = torch.nn.functional.linear(xf, w.to(x.device), None if bias is None else bias.to(torch.float32))
    return y.to(x.dtype)


@codebook_linear.register_fake
def _(x, packed_codes, packed_ids, fmt, out_features, in_features, clusters, weight_scale, group_size=None,
      weight_zero_point=None, input_shift=None, bias=None):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("bitfold::quantized_embedding", mutates_args=())
def quantized_embedding(
    indices: torch.Tensor,
    packed_weight: torch.Tensor,
    fmt: str,
    num_embeddings: int,
    embedding_dim: int,
    weight_scale: torch.Tensor,
    group_size: Optional[int] = None,
    weight_zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    table = unpack_weight(packed_weight, fmt, num_embeddings, embedding_dim, weight_scale, group_size,
                          weight_zero_point)
    return torch.nn.functional.embedding(indices, table.to(packed_weight.device))


@quantized_embedding.register_fake
def _(indices, packed_weight, fmt, num_embeddings, embedding_dim, weight_scale, group_size=None,
      weight_zero_point=None):
    return packed_weight.new_empty((*indices.shape, embedding_dim), dtype=torch.float32)
