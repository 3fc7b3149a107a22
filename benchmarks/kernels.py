"""Low-bit linear kernels side by side: bitfold (TVM) vs PyTorch and ONNX Runtime, on this CPU.

For each layer shape ``N x K`` (output x input features) and row count ``M``, one run times:

* ``torch fp32``: ``F.linear`` on the float32 weight;
* ``ort fp32``: ONNX Runtime ``MatMul`` with the weight as an initializer;
* ``ort nbits L0`` / ``ort nbits L4``: ONNX Runtime ``com.microsoft.MatMulNBits`` (4-bit,
  block 32, zero points), ``accuracy_level`` 0 (fp32 activations) and 4 (int8 activations);
* ``bitfold W4``: the same uint4 codes, scales and zero points (block 32) in bitfold's kernel;
  ``bitfold W4A8``: the same weight with int8 activations (the counterpart of level 4);
* ``bitfold W3`` (uint3, groups of 128, zero points), ``bitfold W2`` (uint2, groups of 32,
  zero points), ``bitfold FP4`` (E2M1 with a per-channel exponent bias, folded into a
  per-channel scale, and LLM-FP4's per-input-channel shift).

Columns: min and median time of many calls (ms), the speed-up over torch fp32 (min times),
the weight bytes each method reads per call (its codes, scales and zero points as stored for
its kernel: bits/w) as GB/s, the fraction of the memory roofline (``weight bytes / measured
bandwidth`` over the min time),
and the arithmetic error: ``max |y - y64| / max |y64|`` against a float64 product with the
method's own dequantized weight (so it shows rounding of activations, not weight quantization).

Timing hygiene: every thread count runs in its own process (``TVM_NUM_THREADS``,
``torch.set_num_threads``, ORT ``intra_op_num_threads``) with ``TVM_THREAD_POOL_SPIN_COUNT=0``,
``OMP_WAIT_POLICY=PASSIVE`` and ORT spinning off; calls rotate over copies of the weights
totalling at least 6x the L3 cache, so weights come from DRAM as in a real model; the
memory bandwidth is measured in the same process and the same way (8 MiB per call, rotating
over 6x L3 of copies; the faster of a streaming TVM kernel and torch's fp32 sgemv); the
load average is printed before and after. The machine is shared: compare within one run.

    python benchmarks/kernels.py --quick            # 2 shapes, M = 1 and 16
    python benchmarks/kernels.py --json out.json    # all shapes, M = 1, 16, 64; 1 and 2 threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

SHAPES = {
    "4096x4096": (4096, 4096),
    "11008x4096": (11008, 4096),
    "4096x11008": (4096, 11008),
    "minilm-384x384": (384, 384),
    "minilm-1536x384": (1536, 384),
    "minilm-384x1536": (384, 1536),
    "smollm2-576x576": (576, 576),
    "smollm2-1536x576": (1536, 576),
    "smollm2-576x1536": (576, 1536),
}
QUICK_SHAPES = ("4096x4096", "minilm-1536x384")
L3_FALLBACK = 32 * 2**20
METHODS = ("torch fp32", "ort fp32", "ort nbits L0", "ort nbits L4", "bitfold W4", "bitfold W4A8",
           "bitfold W4 LUT", "bitfold W3", "bitfold W2", "bitfold W2A8", "bitfold W2 LUT", "bitfold FP4")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def l3_bytes() -> int:
    """The L3 cache size from sysfs (the largest cache level), or 32 MiB when unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(os.path.join(base, entry, "size")) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20}.get(text[-1], 1)
        best = max(best, int(text.rstrip("KM")) * scale)
    return best or L3_FALLBACK


# --------------------------------------------------------------------------- weights


@dataclass
class Quantized:
    """One quantized weight: the op's operands plus what it costs to read."""

    fmt: str
    group: Optional[int]
    packed: Any
    scale: Any
    zero_point: Any
    shift: Any
    dequantized: np.ndarray  # [N, K] float64, with the shift folded into the columns

    def bytes(self) -> int:
        from bitfold.ir import formats

        total = self.packed.numel() + self.scale.numel() * 4
        if self.zero_point is not None:  # stored in the weight's own bit width
            total += -(-self.zero_point.numel() * formats.get(self.fmt).bits // 8)
        return int(total)


def quantize_int(w, fmt: str, group: int) -> Quantized:
    """Asymmetric min/max quantization per group of ``group`` inputs (as MatMulNBits stores)."""
    import torch

    from bitfold.ir import formats, ops

    f = formats.get(fmt)
    n, k = w.shape
    groups = -(-k // group)
    blocks = torch.nn.functional.pad(w, (0, groups * group - k)).view(n, groups, group)  # zeros: a ragged last group
    lo, hi = blocks.amin(-1).clamp(max=0), blocks.amax(-1).clamp(min=0)
    scale = ((hi - lo) / f.qmax).clamp(min=1e-12)
    zero = torch.round(-lo / scale).clamp(0, f.qmax)
    pw = ops.pack_weight(w, fmt, scale, group, zero)
    return Quantized(fmt, group, pw.packed, pw.scale, zero, None, pw.unpack().double().numpy())


def quantize_fp4(w, seed: int) -> Quantized:
    """E2M1 per output channel: the LLM-FP exponent bias from each row's max is its scale;
    plus a random per-input-channel exponent shift k in [-2, 2] (decoded into the reference)."""
    import torch

    from bitfold.ir import formats, ops

    f = formats.get("e2m1")
    bias = f.bias_for_max(w.abs().amax(1).double())
    scale = f.scale_for_bias(bias)
    shift = torch.randint(-2, 3, (w.shape[1],), dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
    pw = ops.pack_weight(w, "e2m1", scale)
    deq = pw.unpack().double().numpy() * np.ldexp(1.0, -shift.numpy())[None, :]
    return Quantized("e2m1", None, pw.packed, pw.scale, None, shift, deq)


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    name: str
    weight_bytes: int
    make_call: Callable[[np.ndarray], Callable[[int], np.ndarray]]  # x -> (copy index -> y)
    copies: int
    dequantized: np.ndarray  # float64 weight the method computes with (for the error column)


def torch_method(w, copies: int) -> Method:
    import torch

    weights = [w.clone() for _ in range(copies)]

    def make_call(x):
        xt = torch.from_numpy(x)
        return lambda i: torch.nn.functional.linear(xt, weights[i]).numpy()

    return Method("torch fp32", w.numel() * 4, make_call, copies, w.double().numpy())


def _ort_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ort_model(node, initializers, k: int, n: int):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def ort_fp32_method(w, copies: int, threads: int) -> Method:
    from onnx import helper, numpy_helper

    n, k = w.shape
    model = _ort_model(helper.make_node("MatMul", ["x", "w"], ["y"]),
                       [numpy_helper.from_array(np.ascontiguousarray(w.numpy().T), "w")], k, n)
    sessions = [_ort_session(model, threads) for _ in range(copies)]

    def make_call(x):
        return lambda i: sessions[i].run(None, {"x": x})[0]

    return Method("ort fp32", w.numel() * 4, make_call, copies, w.double().numpy())


def ort_nbits_method(q: Quantized, level: int, copies: int, threads: int) -> Method:
    """MatMulNBits on ``q`` (uint4, block 32): u codes low nibble first, packed zero points."""
    from onnx import helper, numpy_helper

    from bitfold.ir import formats

    n, k = q.dequantized.shape
    block = q.group
    blocks = k // block
    u = formats.unpack(q.packed, 4, n * k).numpy().reshape(n, k)
    codes = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8).reshape(n, blocks, block // 2)
    zero = q.zero_point.numpy().astype(np.uint8)
    if blocks % 2:
        zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
    zero = (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
    inits = [numpy_helper.from_array(codes, "b"), numpy_helper.from_array(q.scale.numpy().reshape(-1), "s"),
             numpy_helper.from_array(zero, "z")]
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=level)
    model = _ort_model(node, inits, k, n)
    sessions = [_ort_session(model, threads) for _ in range(copies)]

    def make_call(x):
        return lambda i: sessions[i].run(None, {"x": x})[0]

    return Method(f"ort nbits L{level}", q.bytes(), make_call, copies, q.dequantized)


class BitfoldKernels:
    """Compiled bitfold kernels, one per spec, for this machine's CPU."""

    def __init__(self) -> None:
        import tvm

        from bitfold.codegen import host_cpu_target

        self.tvm = tvm
        self.target = host_cpu_target()
        self.build_seconds = 0.0

    def method(self, name: str, q: Quantized, copies: int, **variant: bool) -> Method:
        from bitfold.codegen import LinearKernelSpec, build_linear_kernel, kernel_inputs_from_tensors

        tvm = self.tvm
        n, k = q.dequantized.shape
        spec = LinearKernelSpec(q.fmt, n, k, q.group, q.zero_point is not None, q.shift is not None, False,
                                **variant)
        start = time.perf_counter()
        func = build_linear_kernel(spec, self.target)
        lib = tvm.compile(func, target=self.target)
        self.build_seconds += time.perf_counter() - start
        fn = lib[str(func.attrs["global_symbol"])]
        arrays = kernel_inputs_from_tensors(spec, q.packed, q.scale, q.zero_point, q.shift, None)
        dev = tvm.cpu()
        sets = [[tvm.runtime.tensor(a.copy(), dev) for a in arrays] for _ in range(copies)]

        def make_call(x):
            xt = tvm.runtime.tensor(x, dev)
            y = tvm.runtime.tensor(np.zeros((x.shape[0], n), np.float32), dev)

            def call(i):
                fn(xt, *sets[i], y)
                return y

            return call

        return Method(name, sum(a.nbytes for a in arrays), make_call, copies, q.dequantized)


# --------------------------------------------------------------------------- timing


def _stream_kernel(target, chunks: int, words: int):
    """A TVM kernel that ORs ``chunks × words`` uint32 words into 8-lane accumulators: it
    does one vector load and one OR per 32 bytes, so its speed is the read bandwidth."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from bitfold.codegen import vector as V

    unroll = 4
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("stream")
            T.func_attr({"tirx.noalias": True})
            data = T.arg("data", T.buffer((chunks, words), "uint32"))
            out = T.arg("out", T.buffer((chunks, V.LANES), "uint32"))
            with T.parallel(chunks) as chunk:
                acc = T.alloc_buffer((unroll * V.LANES,), "uint32", scope="local")
                for u in range(unroll):
                    T.buffer_store(acc, V.const(0, "uint32"), [V.ramp(u * V.LANES)])
                with T.serial(words // (unroll * V.LANES)) as step:
                    for u in range(unroll):
                        value = V.load(data, chunk, (step * unroll + u) * V.LANES)
                        T.buffer_store(acc, V.load(acc, u * V.LANES) | value, [V.ramp(u * V.LANES)])
                total = V.load(acc, 0)
                for u in range(1, unroll):
                    total = total | V.load(acc, u * V.LANES)
                T.buffer_store(out, total, [chunk, V.ramp(0)])
    return builder.get()


def _best_call_gb_s(call: Callable[[int], Any], copies: int, nbytes: int) -> float:
    best = float("inf")
    for i in range(5 * copies):
        start = time.perf_counter()
        call(i % copies)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def measure_bandwidth(kernels: "BitfoldKernels", budget: int) -> Tuple[float, str]:
    """Read bandwidth (GB/s) of this process's threads, and which probe gave it.

    Two probes, timed the way the layers are (calls reading 8 MiB each, rotating over copies
    totalling ``budget`` bytes so they come from DRAM, best call): a TVM kernel that ORs the
    words into vector accumulators, and ``F.linear`` of one row with an fp32 matrix (MKL's
    sgemv, which is at its roofline). The faster one is the roofline. Short calls, like the
    kernels', so that time slices lost to other processes on a shared machine hit both alike.
    """
    import torch

    tvm = kernels.tvm
    chunks, words = 16, 2**17  # 8 MiB per call
    nbytes = chunks * words * 4
    copies = max(2, -(-budget // nbytes))
    lib = tvm.compile(_stream_kernel(kernels.target, chunks, words), target=kernels.target)
    data = [tvm.runtime.tensor(np.full((chunks, words), i, np.uint32), tvm.cpu()) for i in range(copies)]
    out = tvm.runtime.tensor(np.zeros((chunks, 8), np.uint32), tvm.cpu())
    stream = _best_call_gb_s(lambda i: lib["stream"](data[i], out), copies, nbytes)
    del data
    matrices = [torch.full((1024, 2048), float(i)) for i in range(copies)]
    row = torch.ones(1, 2048)
    sgemv = _best_call_gb_s(lambda i: torch.nn.functional.linear(row, matrices[i]), copies, nbytes)
    return (stream, "TVM stream kernel") if stream >= sgemv else (sgemv, "torch fp32 sgemv")


def time_method(method: Method, x: np.ndarray, repeats: int) -> Tuple[float, float, np.ndarray]:
    call = method.make_call(x)
    out = call(0)
    result = out.numpy() if hasattr(out, "numpy") and not isinstance(out, np.ndarray) else out
    times = []
    for i in range(max(repeats, method.copies)):
        start = time.perf_counter()
        call(i % method.copies)
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), np.asarray(result, dtype=np.float64)


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Time every method for every shape and M at ``args.threads`` threads (one process)."""
    import torch

    threads = args.threads
    torch.set_num_threads(threads)
    kernels = BitfoldKernels()
    budget = 6 * l3_bytes()
    bandwidth, probe = measure_bandwidth(kernels, budget)
    rows: List[Dict[str, Any]] = []
    for shape in args.shapes:
        n, k = SHAPES[shape]
        gen = torch.Generator().manual_seed(n * 31 + k)
        w = torch.randn(n, k, generator=gen) * 0.05
        copies = lambda nbytes: max(1, -(-budget // nbytes))  # noqa: E731
        w4 = quantize_int(w, "uint4", 32)
        w3 = quantize_int(w, "uint3", 128)
        w2 = quantize_int(w, "uint2", 32)
        fp4 = quantize_fp4(w, seed=n + k)
        methods = {
            "torch fp32": lambda: torch_method(w, copies(w.numel() * 4)),
            "ort fp32": lambda: ort_fp32_method(w, copies(w.numel() * 4), threads),
            "ort nbits L0": lambda: ort_nbits_method(w4, 0, copies(w4.bytes()), threads),
            "ort nbits L4": lambda: ort_nbits_method(w4, 4, copies(w4.bytes()), threads),
            "bitfold W4": lambda: kernels.method("bitfold W4", w4, copies(w4.bytes())),
            "bitfold W4A8": lambda: kernels.method("bitfold W4A8", w4, copies(w4.bytes()), int8_activations=True),
            "bitfold W4 LUT": lambda: kernels.method("bitfold W4 LUT", w4, copies(w4.bytes()), lookup_tables=True),
            "bitfold W3": lambda: kernels.method("bitfold W3", w3, copies(w3.bytes())),
            "bitfold W2": lambda: kernels.method("bitfold W2", w2, copies(w2.bytes())),
            "bitfold W2A8": lambda: kernels.method("bitfold W2A8", w2, copies(w2.bytes()), int8_activations=True),
            "bitfold W2 LUT": lambda: kernels.method("bitfold W2 LUT", w2, copies(w2.bytes()), lookup_tables=True),
            "bitfold FP4": lambda: kernels.method("bitfold FP4", fp4, copies(fp4.bytes())),
        }
        inputs = {m: torch.randn(m, k, generator=gen).numpy() for m in args.m}
        for name, make in methods.items():
            if name not in args.methods:
                continue
            # One method alive at a time: ONNX Runtime's idle session thread pools, left
            # alive beside TVM's, halved the TVM kernels' two-thread speed on some shapes.
            method = make()
            for m, x in inputs.items():
                repeats = args.repeats if m == 1 else max(5, args.repeats // 3)
                t_min, t_med, y = time_method(method, x, repeats)
                want = x.astype(np.float64) @ method.dequantized.T
                rows.append({
                    "shape": shape, "N": n, "K": k, "M": m, "threads": threads, "method": name,
                    "min_ms": t_min * 1e3, "median_ms": t_med * 1e3, "weight_bytes": method.weight_bytes,
                    "bits_per_weight": method.weight_bytes * 8 / (n * k),
                    "gb_per_s": method.weight_bytes / t_min / 1e9,
                    "roofline": method.weight_bytes / (bandwidth * 1e9) / t_min,
                    "gflops": 2 * m * n * k / t_min / 1e9,
                    "error": float(np.abs(y - want).max() / np.abs(want).max()),
                })
            del method
    return {"threads": threads, "bandwidth_gb_s": bandwidth, "bandwidth_probe": probe,
            "build_seconds": kernels.build_seconds, "rows": rows}


# --------------------------------------------------------------------------- report


def format_tables(results: Sequence[Dict[str, Any]]) -> str:
    """One table per (shape, M): methods down, thread counts across."""
    by_key: Dict[Tuple[str, int, str, int], Dict[str, Any]] = {}
    for res in results:
        for row in res["rows"]:
            by_key[(row["shape"], row["M"], row["method"], row["threads"])] = row
    threads = [res["threads"] for res in results]
    lines = []
    for res in results:
        lines.append(f"{res['threads']} thread(s): measured read bandwidth {res['bandwidth_gb_s']:.1f} GB/s "
                     f"({res['bandwidth_probe']}); "
                     f"kernel builds {res['build_seconds']:.0f} s")
    shapes = list(dict.fromkeys((r["shape"], r["M"]) for res in results for r in res["rows"]))
    for shape, m in shapes:
        n, k = SHAPES[shape]
        lines.append("")
        lines.append(f"{shape} (N={n}, K={k}), M={m}")
        head = f"  {'method':14s} {'bits/w':>6s}"
        for t in threads:
            head += f" | {t}T: {'min ms':>8s} {'med ms':>8s} {'x torch':>7s} {'GB/s':>6s} {'roofl':>5s}"
        head += f" | {'error':>8s}"
        lines.append(head)
        for method in METHODS:
            row0 = next((by_key.get((shape, m, method, t)) for t in threads if (shape, m, method, t) in by_key), None)
            if row0 is None:
                continue
            line = f"  {method:14s} {row0['bits_per_weight']:6.2f}"
            for t in threads:
                row = by_key.get((shape, m, method, t))
                ref = by_key.get((shape, m, "torch fp32", t))
                if row is None:
                    line += " |" + " " * 43
                    continue
                speedup = ref["min_ms"] / row["min_ms"] if ref else float("nan")
                line += (f" | {'':3s} {row['min_ms']:8.3f} {row['median_ms']:8.3f} {speedup:7.2f} "
                         f"{row['gb_per_s']:6.1f} {row['roofline']:5.2f}")
            line += f" | {row0['error']:8.1e}"
            lines.append(line)
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, M = 1 and 16, fewer calls")
    parser.add_argument("--shapes", help=f"comma-separated, from: {', '.join(SHAPES)}")
    parser.add_argument("--m", help="comma-separated row counts (default 1,16,64)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--methods", help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--repeats", type=int, help="calls timed per method at M = 1 (default 50; quick 20)")
    parser.add_argument("--json", metavar="PATH", help="also write all rows as JSON to PATH")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shapes = args.shapes.split(",") if args.shapes else list(QUICK_SHAPES if args.quick else SHAPES)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    args.m = [int(v) for v in args.m.split(",")] if args.m else ([1, 16] if args.quick else [1, 16, 64])
    args.methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [s for s in args.methods if s not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    args.repeats = args.repeats or (20 if args.quick else 50)
    return args


def _worker_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "TVM_THREAD_POOL_SPIN_COUNT": "0",
                "OMP_WAIT_POLICY": "PASSIVE", "MKL_NUM_THREADS": str(threads)})
    return env


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        json.dump(run_worker(args), sys.stdout)
        return
    print(f"load average before: {load_average()}", flush=True)
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
               "--shapes", ",".join(args.shapes), "--m", ",".join(map(str, args.m)),
               "--methods", ",".join(args.methods), "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, env=_worker_env(threads), stdout=subprocess.PIPE, check=True)
        results.append(json.loads(done.stdout))
        print(f"  {threads} thread(s) done; load average: {load_average()}", flush=True)
    print(format_tables(results))
    print(f"\nload average after: {load_average()}")
    if args.json:
        payload = {"load_average_after": load_average(), "results": results}
        directory = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as fh:
            json.dump(payload, fh, indent=1)
        os.replace(fh.name, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
