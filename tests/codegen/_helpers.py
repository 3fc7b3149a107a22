"""Shared helpers: random quantized layers, kernel builds, and running a kernel on numpy."""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import tvm

from bitfold.codegen import LinearKernelSpec, build_linear_kernel, kernel_inputs_from_tensors
from bitfold.ir import formats, ops


@dataclass
class Layer:
    """A random quantized linear layer: the op's operands and the matching kernel spec."""

    spec: LinearKernelSpec
    packed: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    shift: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]

    def reference(self, x: torch.Tensor) -> np.ndarray:
        """What ``bitfold::quantized_linear`` computes for ``x``: the kernels' reference."""
        s = self.spec
        return torch.ops.bitfold.quantized_linear(
            x, self.packed, s.weight_format, s.out_features, s.in_features, self.scale, s.group_size,
            self.zero_point, self.shift, self.bias,
        ).numpy()

    def arrays(self) -> List[np.ndarray]:
        return kernel_inputs_from_tensors(self.spec, self.packed, self.scale, self.zero_point, self.shift, self.bias)


def random_layer(fmt: str, n: int, k: int, group: Optional[int] = None, zero_point: bool = False,
                 shift: bool = False, bias: bool = False, seed: int = 0, **spec_kwargs) -> Layer:
    gen = torch.Generator().manual_seed(seed)
    f = formats.get(fmt)
    w = torch.randn(n, k, generator=gen)
    scale_group = f.block_size if isinstance(f, formats.BlockFormat) else group
    if scale_group is None:
        amax = w.abs().amax(1)
    else:
        groups = -(-k // scale_group)
        amax = torch.nn.functional.pad(w.abs(), (0, groups * scale_group - k)).view(n, groups, scale_group).amax(-1)
    scale = amax / f.max
    zp = None
    if zero_point:
        zp = torch.randint(0, 2**f.bits, scale.shape, generator=gen).float()
        if getattr(f, "signed", False):
            zp = zp - 2 ** (f.bits - 1)
    packed = ops.pack_weight(w, fmt, scale, group, zp)
    k_shift = torch.randint(-3, 4, (k,), dtype=torch.int32, generator=gen) if shift else None
    b = torch.randn(n, generator=gen) if bias else None
    spec = LinearKernelSpec(f.name, n, k, group, zero_point, shift, bias, **spec_kwargs)
    return Layer(spec, packed.packed, packed.scale, zp, k_shift, b)


class Kernel:
    """A kernel compiled for the CPU, callable on numpy arrays."""

    def __init__(self, spec: LinearKernelSpec, target: tvm.target.Target, m: Optional[int] = None) -> None:
        self.spec = spec
        self.func = build_linear_kernel(spec, target, m)
        self.name = str(self.func.attrs["global_symbol"])
        self.lib = tvm.compile(self.func, target=target)

    def __call__(self, x: np.ndarray, arrays: List[np.ndarray]) -> np.ndarray:
        dev = tvm.cpu()
        y = np.zeros((x.shape[0], self.spec.out_features), dtype=x.dtype)
        args = [tvm.runtime.tensor(a, dev) for a in (x, *arrays, y)]
        self.lib[self.name](*args)
        return args[-1].numpy()


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def kernel_outputs(layer: Layer, rows=(1, 5)):
    """Compile ``layer``'s kernel for this CPU and run it on random inputs of each row count:
    yields ``(x, y)`` pairs."""
    from bitfold.codegen import host_cpu_target

    kernel = Kernel(layer.spec, host_cpu_target())
    arrays = layer.arrays()
    gen = torch.Generator().manual_seed(0)
    for m in rows:
        x = torch.randn(m, layer.spec.in_features, generator=gen)
        yield x, kernel(x.numpy(), arrays)
