"""Build the TIR kernel of one quantized linear layer for a target."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Optional, Union

import tvm
from tvm import tirx as tir
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from bitfold.codegen import vector as V
from bitfold.codegen.cpu_gemm import emit_gemm
from bitfold.codegen.cpu_gemv import emit_gemv
from bitfold.codegen.cpu_int8 import emit_int8
from bitfold.codegen.cpu_lut import emit_lut
from bitfold.codegen.cuda import emit_cuda_gemm, emit_cuda_gemv
from bitfold.codegen.kernel_args import KernelArgs, declare_args
from bitfold.codegen.spec import KernelError, LinearKernelSpec

TargetLike = Union[str, Dict[str, Any], tvm.target.Target]


def host_cpu_target(num_cores: Optional[int] = None) -> tvm.target.Target:
    """An LLVM target for this machine's CPU (what ``-mcpu=native`` means elsewhere)."""
    from tvm.target import codegen

    config: Dict[str, Any] = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    if num_cores is not None:
        config["num-cores"] = int(num_cores)
    return tvm.target.Target(config)


def as_target(target: TargetLike) -> tvm.target.Target:
    if isinstance(target, tvm.target.Target):
        return target
    try:
        return tvm.target.Target(target)
    except Exception as err:  # TVM raises its own error types for malformed targets
        raise KernelError(f"not a TVM target: {target!r} ({err})") from None


def kernel_name(spec: LinearKernelSpec, m: Optional[int]) -> str:
    """A readable, unique-per-spec PrimFunc name, e.g. ``bitfold_linear_int4_g128_zp_4096x4096``."""
    parts = ["bitfold_linear", spec.weight_format]
    if spec.effective_group_size is not None:
        parts.append(f"g{spec.effective_group_size}")
    parts += [flag for flag, on in (("zp", spec.has_zero_point), ("shift", spec.has_shift),
                                    ("bias", spec.has_bias), ("a8", spec.int8_activations),
                                    ("lut", spec.lookup_tables)) if on]
    if spec.act_dtype != "float32":
        parts.append(spec.act_dtype)
    parts.append(f"{spec.out_features}x{spec.in_features}")
    if m is not None:
        parts.append(f"m{m}")
    return re.sub(r"[^0-9a-zA-Z_]", "_", "_".join(parts))


def _dispatch(args: KernelArgs, m: Optional[int], gemv: Callable[[], None], gemm: Callable[[], None]) -> None:
    if m is None:
        with T.If(args.m == 1):
            with T.Then():
                gemv()
            with T.Else():
                gemm()
    elif m == 1:
        gemv()
    else:
        gemm()


def build_linear_kernel(spec: LinearKernelSpec, target: TargetLike, m: Optional[int] = None) -> tir.PrimFunc:
    """The PrimFunc ``f(x, *kernel_inputs(spec, ...), y)`` computing ``y = (x·2^-k) Ŵᵀ + b``.

    ``m`` fixes the number of rows; ``None`` leaves it symbolic and the kernel branches to
    its GEMV code for ``M == 1`` and to its GEMM code otherwise. LLVM targets get the AVX2
    kernels when the target has AVX2 and FMA (portable vector code otherwise); CUDA targets
    get kernels bound to blocks and threads.
    """
    target = as_target(target)
    if m is not None and m < 1:
        raise KernelError(f"{spec.describe()}: the number of rows must be positive, got {m}")
    kind = target.kind.name
    if kind not in ("llvm", "cuda"):
        raise KernelError(f"{spec.describe()}: no kernels for target kind {kind!r} (llvm or cuda)")
    for on, variant in ((spec.int8_activations, "int8-activation"), (spec.lookup_tables, "lookup-table")):
        if on and kind == "cuda":
            raise KernelError(f"{spec.describe()}: the {variant} variant is CPU-only")
        if on and not V.has_avx2(target):
            raise KernelError(f"{spec.describe()}: the {variant} variant needs an x86 target with AVX2")
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name(kernel_name(spec, m))
            T.func_attr({"tirx.noalias": True})
            rows = tir.Var("m", "int64") if m is None else m
            args = declare_args(spec, rows)
            if kind == "cuda":
                _dispatch(args, m, lambda: emit_cuda_gemv(args), lambda: emit_cuda_gemm(args))
            elif spec.int8_activations:
                emit_int8(args)
            elif spec.lookup_tables:
                emit_lut(args)
            else:
                avx2 = V.has_avx2(target)
                _dispatch(args, m, lambda: emit_gemv(args, avx2), lambda: emit_gemm(args, avx2))
    return builder.get()
