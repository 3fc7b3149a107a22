"""A tour of bitfold's low-bit number formats (``bitfold.ir.formats``).

It shows three things:

1. what a format is: its bit width, largest value, number of distinct values and, for the
   4-bit formats, the whole grid of values it can represent;
2. how well several 4-bit formats fit a heavy-tailed weight-like tensor (Student-t, shape
   [256, 1024], fixed seed), each with a typical scaling scheme, measured as SQNR in dB
   (higher is better): per-channel scales, NF4 with absmax scales per group of 64, and the
   block-scaled MXFP4 and NVFP4, which compute their own scales;
3. how 4-bit codes are packed into bytes and read back.

Run it with ``python examples/formats_demo.py``; it needs only torch and takes a few seconds.
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence

import torch

from bitfold.ir import formats

TABLE_FORMATS = ["int4", "uint4", "int8", "e2m1", "e3m0", "e1m2", "fp8_e4m3", "fp8_e5m2", "nf4", "post4",
                 "mxfp4", "nvfp4"]


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``header`` with left-aligned, padded columns."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def compact_grid(grid: torch.Tensor) -> str:
    """The grid values, three significant digits each, space-separated."""
    return " ".join(f"{v:.3g}" for v in grid.tolist())


def show_formats() -> None:
    """Part 1: a table of formats and, for 4-bit ones, their grids."""
    print("1. Formats (block formats MXFP4/NVFP4 show their element format's values)\n")
    rows = []
    for name in TABLE_FORMATS:
        fmt = formats.get(name)
        grid = fmt.grid
        rows.append([fmt.name, str(fmt.bits), f"{fmt.max:g}", str(grid.numel()),
                     compact_grid(grid) if fmt.bits == 4 else ""])
    print_table(["format", "bits", "max", "values", "grid (4-bit formats)"], rows)
    print(f"\n({len(formats.names())} names in all: formats.names())")


def per_channel(fmt: formats.Format) -> Callable[[torch.Tensor], torch.Tensor]:
    """Quantize with one absmax scale per row (output channel): ``amax / fmt.max``."""
    def quantize(w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().amax(dim=1) / fmt.max
        return fmt.quantize(w, scale, axis=0)
    return quantize


def per_group(fmt: formats.Format, group_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Quantize with one absmax scale per ``group_size`` consecutive values of a row."""
    def quantize(w: torch.Tensor) -> torch.Tensor:
        groups = w.unflatten(1, (-1, group_size))
        scale = groups.abs().amax(dim=2) / fmt.max
        return fmt.quantize(w, scale, axis=1, group_size=group_size)
    return quantize


def sqnr_db(x: torch.Tensor, q: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σx² / Σ(x-q)²)`` in dB."""
    return 10.0 * math.log10(float((x**2).sum()) / float(((x - q) ** 2).sum()))


def compare_4bit() -> None:
    """Part 2: SQNR of several 4-bit formats on a heavy-tailed tensor."""
    torch.manual_seed(0)
    w = torch.distributions.StudentT(df=4.0).sample((256, 1024))
    kurtosis = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
    print(f"\n2. 4-bit formats on a Student-t(4) tensor {list(w.shape)} "
          f"(max |w| / std = {float(w.abs().max() / w.std()):.1f}, kurtosis {kurtosis:.1f})\n")
    schemes = []
    for name in ["int4", "e2m1", "e3m0", "e1m2", "post4"]:
        fmt = formats.get(name)
        schemes.append((name, f"per channel (amax / {fmt.max:g})", per_channel(fmt)))
    schemes += [
        ("nf4", "absmax per group of 64", per_group(formats.get("nf4"), 64)),
        ("mxfp4", "own E8M0 scale per 32 values", formats.get("mxfp4").quantize),
        ("nvfp4", "own E4M3 scale per 16 + fp32", formats.get("nvfp4").quantize),
    ]
    rows: List[List[str]] = []
    for name, how, quantize in schemes:
        rows.append([name, how, f"{sqnr_db(w, quantize(w)):.2f}"])
    print_table(["format", "scales", "SQNR dB"], rows)
    print("\ne1m2 is a uniform grid (steps of 0.5 up to 3.5), so per channel it equals int4;\n"
          "finer scales (nf4's groups, the block formats) cope best with the outliers.")


def show_packing() -> None:
    """Part 3: encode a few values as e2m1 codes, pack them into bytes and unpack them."""
    fmt = formats.get("e2m1")
    values = torch.tensor([0.5, -1.0, 6.0, 0.0, 3.0])
    codes = fmt.encode(values)
    packed = formats.pack(codes, fmt.bits)
    unpacked = formats.unpack(packed, fmt.bits, codes.numel())
    print("\n3. Packing e2m1 codes (sign | 2 exponent bits | 1 mantissa bit)\n")
    print(f"values          {values.tolist()}")
    print(f"codes           {['0b' + format(int(c), '04b') for c in codes]}")
    print(f"packed bytes    {packed.numpy().tobytes().hex(' ')}  "
          f"({codes.numel()} codes -> {packed.numel()} bytes)")
    print(f"unpacked codes  {unpacked.tolist()}")
    print(f"decoded         {fmt.decode(unpacked).tolist()}")
    print("Bit order: code i sits in byte i // 2, the low nibble first (as ONNX INT4 stores it);\n"
          "an odd count leaves the last high nibble as zero padding.")


def main() -> None:
    """Run the three parts of the tour."""
    show_formats()
    compare_4bit()
    show_packing()


if __name__ == "__main__":
    main()
