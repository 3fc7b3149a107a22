"""Throughput of quantize, encode and pack for the number formats in ``bitfold.ir.formats``.

For every format the script builds a Gaussian float32 tensor of shape ``[numel / 4096, 4096]``,
computes its scales once (not timed), and times three operations:

* ``quantize``: fake quantization, ``f.quantize(x, scale, ...)``;
* ``encode``: the uint8 codes, ``f.encode(x, scale, ...)``;
* ``pack``: ``formats.pack(codes, f.bits)`` on those codes.

Scales: per output channel (one scale per row, ``axis=0``) ``amax / f.max`` for symmetric
formats; for unsigned integers an asymmetric ``(max - min) / f.max`` with a zero point; block
formats (MX, NVFP4) use their own block scales from ``f.block_scales(x)``.

Each operation runs once to warm up, then ``--repeats`` times; the table reports the best
(minimum) time as millions of values per second, plus the SQNR of the quantized tensor.

    python benchmarks/formats.py                      # 16M values, 1 thread
    python benchmarks/formats.py --numel 4194304 --formats int4,e2m1,nvfp4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bitfold.ir import formats

ROW_LENGTH = 4096
DEFAULT_NUMEL = 16 * 2**20
DEFAULT_FORMATS = (
    "int4,uint4,int8,e2m1,e3m0,e1m2,e4m3,fp8_e4m3,fp8_e5m2,fp6_e2m3,nf4,post4,mxfp4,mxfp8_e4m3,nvfp4"
)

# Keyword arguments for quantize/encode: scale, axis, group_size, zero_point.
QuantArgs = Dict[str, Any]


def quant_args(fmt: formats.Format, x: torch.Tensor) -> QuantArgs:
    """The scale (and zero point) arguments that quantize ``x`` with ``fmt``.

    Block formats get their own block scales; unsigned integers an asymmetric per-row
    min/max scale with a zero point; everything else a symmetric per-row ``amax / max``.
    """
    if isinstance(fmt, formats.BlockFormat):
        return {"scale": fmt.block_scales(x)}
    tiny = torch.finfo(torch.float32).tiny
    if isinstance(fmt, formats.IntFormat) and not fmt.signed:
        lo = x.amin(dim=1).clamp(max=0.0)
        hi = x.amax(dim=1).clamp(min=0.0)
        scale = ((hi - lo) / fmt.max).clamp(min=tiny)
        zero_point = torch.round(-lo / scale)
        return {"scale": scale, "axis": 0, "zero_point": zero_point}
    scale = (x.abs().amax(dim=1) / fmt.max).clamp(min=tiny)
    return {"scale": scale, "axis": 0}


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sqnr_db(x: torch.Tensor, q: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σx² / Σ(x-q)²)`` in dB (inf if exact)."""
    x64, q64 = x.to(torch.float64), q.to(torch.float64)
    noise = float(((x64 - q64) ** 2).sum())
    signal = float((x64**2).sum())
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)


def bench_format(fmt: formats.Format, x: torch.Tensor, repeats: int) -> Dict[str, Any]:
    """Time quantize, encode and pack of ``x`` with ``fmt``; return one table row."""
    args = quant_args(fmt, x)
    mvalues = x.numel() / 1e6
    t_quantize = best_time(lambda: fmt.quantize(x, **args), repeats)
    t_encode = best_time(lambda: fmt.encode(x, **args), repeats)
    codes = fmt.encode(x, **args)
    t_pack = best_time(lambda: formats.pack(codes, fmt.bits), repeats)
    return {
        "format": fmt.name,
        "bits": fmt.bits,
        "quantize_mvalues_per_s": mvalues / t_quantize,
        "encode_mvalues_per_s": mvalues / t_encode,
        "pack_mvalues_per_s": mvalues / t_pack,
        "sqnr_db": sqnr_db(x, fmt.quantize(x, **args)),
    }


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    columns: List[Tuple[str, str, Callable[[Any], str]]] = [
        ("format", "format", str),
        ("bits", "bits", str),
        ("quantize Mval/s", "quantize_mvalues_per_s", lambda v: f"{v:.1f}"),
        ("encode Mval/s", "encode_mvalues_per_s", lambda v: f"{v:.1f}"),
        ("pack Mval/s", "pack_mvalues_per_s", lambda v: f"{v:.1f}"),
        ("SQNR dB", "sqnr_db", lambda v: f"{v:.2f}"),
    ]
    cells = [[render(row[key]) for _, key, render in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join([first] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])])

    header = line([title for title, _, _ in columns])
    return "\n".join([header, "-" * len(header)] + [line(c) for c in cells])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options; ``--formats`` becomes a list of formats, ``--numel`` is checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=DEFAULT_NUMEL,
                        help=f"values per tensor, a multiple of {ROW_LENGTH} (default: 16M)")
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help="comma-separated format names")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per op; the best counts")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the input tensor")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = parser.parse_args(argv)
    if args.numel <= 0 or args.numel % ROW_LENGTH:
        parser.error(f"--numel must be a positive multiple of {ROW_LENGTH}, got {args.numel}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    try:
        args.formats = [formats.get(n.strip()) for n in args.formats.split(",") if n.strip()]
    except formats.FormatError as err:
        parser.error(str(err))
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the benchmark and print the table (and write JSON when asked)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.numel // ROW_LENGTH, ROW_LENGTH, generator=generator)

    print(
        f"bitfold formats benchmark: {args.numel:,} float32 values as {list(x.shape)}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}"
    )
    print(
        f"best (min) of {args.repeats} timed run(s) after 1 warm-up; scales precomputed, not timed "
        "(per-row amax/max; uint: min/max + zero point; MX/NVFP4: own block scales)"
    )
    print()
    rows = []
    for fmt in args.formats:
        rows.append(bench_format(fmt, x, args.repeats))
        print(f"  done {fmt.name}", file=sys.stderr, flush=True)
    print(format_table(rows))

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"\nwrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
