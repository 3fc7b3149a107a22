"""bitfold::codebook_linear: one GEMM that equals the sum of a split layer's quantized parts."""

import pytest
import torch

from bitfold.ir import formats, ops


def _clusters(w: torch.Tensor, k: int) -> torch.Tensor:
    """Cluster ids by value tertiles per row (any partition works for the op)."""
    edges = torch.quantile(w, torch.linspace(0, 1, k + 1)[1:-1], dim=1).T.contiguous()
    return torch.searchsorted(edges, w.contiguous())


def _part_params(part: torch.Tensor, fmt: str, group_size=None, asymmetric=False):
    """Min/max scale (and zero point) of one zero-filled part, per row or per group, keeping 0 exact."""
    f = formats.get(fmt)
    rows = part if group_size is None else part.unflatten(1, (-1, group_size))
    if asymmetric:
        lo, hi = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
        scale = ((hi - lo) / (f.qmax - f.qmin)).clamp_min(1e-8)
        return scale, torch.round(f.qmin - lo / scale).clamp(f.qmin, f.qmax)
    return (rows.abs().amax(-1) / f.max).clamp_min(1e-8), None


def _split_and_quantize(w, ids, k, fmt, group_size=None, asymmetric=False):
    """Per part: codes, scale, zero point, and the dequantized part (dense, as SplitQuant runs it)."""
    f = formats.get(fmt)
    layout = {"axis": 0} if group_size is None else {"axis": 1, "group_size": group_size}
    out = []
    for c in range(k):
        part = torch.where(ids == c, w, torch.zeros(()))
        scale, zero = _part_params(part, fmt, group_size, asymmetric)
        codes = f.encode(part, scale, zero_point=zero, **layout)
        out.append((codes, scale, zero, f.decode(codes, scale, zero_point=zero, **layout)))
    return out


@pytest.mark.parametrize("fmt,group_size,asymmetric,k", [
    ("uint2", None, True, 3), ("uint3", None, True, 2), ("uint2", 16, True, 4), ("int4", None, False, 3),
    ("e2m1", 16, False, 3), ("nf4", None, False, 2),
])
def test_one_gemm_equals_the_sum_of_the_quantized_parts(fmt, group_size, asymmetric, k):
    torch.manual_seed(0)
    w, x, b = torch.randn(24, 48), torch.randn(3, 5, 48), torch.randn(24)
    ids = _clusters(w, k)
    parts = _split_and_quantize(w, ids, k, fmt, group_size, asymmetric)
    codes = torch.stack([p[0] for p in parts]).gather(0, ids[None])[0]
    scale = torch.stack([p[1] for p in parts])
    zero = torch.stack([p[2] for p in parts]) if asymmetric else None
    cw = ops.codebook_from_codes(codes, ids, fmt, scale, group_size, zero)
    dense_parts = torch.stack([p[3] for p in parts])
    # Zeros outside a cluster decode to zero, so the parts sum to the codebook weight bit for bit.
    assert torch.equal(cw.unpack(), dense_parts.sum(0))
    y = torch.ops.bitfold.codebook_linear(x, cw.packed_codes, cw.packed_ids, fmt, 24, 48, k, cw.scale, group_size,
                                          cw.zero_point, None, b)
    three_gemms = sum(torch.nn.functional.linear(x, p) for p in dense_parts) + b
    torch.testing.assert_close(y, three_gemms, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, torch.nn.functional.linear(x, cw.unpack(), b))


def test_storage_is_bits_plus_id_bits_per_weight():
    torch.manual_seed(1)
    w = torch.randn(16, 64)
    for k, id_bits in ((2, 1), (3, 2), (4, 2)):
        ids = _clusters(w, k)
        parts = _split_and_quantize(w, ids, k, "uint2", asymmetric=True)
        codes = torch.stack([p[0] for p in parts]).gather(0, ids[None])[0]
        cw = ops.codebook_from_codes(codes, ids, "uint2", torch.stack([p[1] for p in parts]),
                                     zero_point=torch.stack([p[2] for p in parts]))
        assert cw.packed_codes.numel() * 8 == 16 * 64 * 2
        assert cw.packed_ids.numel() * 8 == 16 * 64 * id_bits
        assert ops.cluster_id_bits(k) == id_bits


def test_input_shift_is_undone_exactly():
    torch.manual_seed(2)
    w, x = torch.randn(8, 32), torch.randn(4, 32)
    ids = _clusters(w, 3)
    parts = _split_and_quantize(w, ids, 3, "e2m1")
    codes = torch.stack([p[0] for p in parts]).gather(0, ids[None])[0]
    cw = ops.codebook_from_codes(codes, ids, "e2m1", torch.stack([p[1] for p in parts]))
    shift = torch.randint(0, 6, (32,), dtype=torch.int32)
    y = torch.ops.bitfold.codebook_linear(x * torch.exp2(shift.float()), cw.packed_codes, cw.packed_ids, "e2m1",
                                          8, 32, 3, cw.scale, None, None, shift, None)
    assert torch.equal(y, torch.nn.functional.linear(x, cw.unpack()))


def test_errors_name_the_problem():
    w = torch.randn(4, 8)
    ids = _clusters(w, 3)
    codes = torch.zeros(4, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"scale has shape \(3, 5\), expected \(3, 4\)"):
        ops.codebook_from_codes(codes, ids, "int4", torch.ones(3, 5))
    with pytest.raises(ValueError, match="block format"):
        ops.codebook_from_codes(codes, ids, "mxfp4", torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[0, 1\]"):
        ops.codebook_from_codes(codes, ids, "int4", torch.ones(2, 4))
    cw = ops.codebook_from_codes(codes, ids, "int4", torch.ones(3, 4))
    with pytest.raises(ValueError, match="input has 9 features, the weight expects 8"):
        torch.ops.bitfold.codebook_linear(torch.randn(2, 9), cw.packed_codes, cw.packed_ids, "int4", 4, 8, 3,
                                          cw.scale, None, None, None, None)
    with pytest.raises(ValueError, match="2 to 256 clusters"):
        ops.cluster_id_bits(1)


class _Codebook(torch.nn.Module):
    def __init__(self):
        super().__init__()
        w = torch.randn(16, 32)
        ids = _clusters(w, 3)
        parts = _split_and_quantize(w, ids, 3, "uint3", asymmetric=True)
        codes = torch.stack([p[0] for p in parts]).gather(0, ids[None])[0]
        cw = ops.codebook_from_codes(codes, ids, "uint3", torch.stack([p[1] for p in parts]),
                                     zero_point=torch.stack([p[2] for p in parts]))
        for name in ("packed_codes", "packed_ids", "scale", "zero_point"):
            self.register_buffer(name, getattr(cw, name))
        self.bias = torch.nn.Parameter(torch.randn(16))

    def forward(self, x):
        return torch.ops.bitfold.codebook_linear(x, self.packed_codes, self.packed_ids, "uint3", 16, 32, 3,
                                                 self.scale, None, self.zero_point, None, self.bias)


def test_codebook_linear_survives_torch_export():
    torch.manual_seed(3)
    model = _Codebook()
    x = torch.randn(2, 7, 32)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.bitfold.codebook_linear.default) == 1
    x5 = torch.randn(5, 7, 32)
    assert torch.equal(ep.module()(x5), model(x5))
