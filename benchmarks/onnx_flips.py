"""Where an exported model starts to differ from bitfold's simulation: quantizer by quantizer.

For a quantized model and its ``simulate`` export (as ``benchmarks/onnx_latency.py --agreement
... --cache DIR`` leaves them: ``DIR/<model>-<recipe>`` and ``DIR/<model>-<recipe>-simulate.onnx``),
runs one real batch through both and prints, for every activation quantizer in graph order,
how far its input differs between ONNX Runtime and PyTorch and how many of its output codes
differ. Every quantizer is exact given equal inputs (``tests/backends/onnx``), so differing
codes mean the float arithmetic before it (LayerNorm, MatMul accumulation order) moved values
across rounding boundaries — and the count per quantizer shows how such flips cascade. Codes
at padded positions count too, although a masked output (MiniLM's mean pooling) ignores them.

    python benchmarks/onnx_flips.py --model minilm --recipe w4a8-fp --cache /tmp/bitfold-bench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnx_latency  # noqa: E402  (the same batches and sessions as the agreement table)

from bitfold import zoo  # noqa: E402
from bitfold.api.quantized_model import QuantizedModel  # noqa: E402

FAKE_QUANTIZE = torch.ops.bitfold.fake_quantize.default


def torch_quantizers(q: QuantizedModel, batch: tuple) -> List[Tuple[str, str, np.ndarray, np.ndarray]]:
    """``(node, format, input, output)`` of every ``fake_quantize`` in graph order."""
    seen = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target is FAKE_QUANTIZE:
                seen.append((n.name, n.args[1], self.env[n.args[0]].numpy(), out.numpy()))
            return out

    with torch.no_grad():
        Recorder(q.graph_module).run(*batch)
    return seen


def onnx_quantizers(path: Path, batch: tuple) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``(input, output)`` of every quantize point of the file (a quantizer function or a
    QuantizeLinear → DequantizeLinear pair) in graph order."""
    model = onnx.load(path)
    points = []
    for node in model.graph.node:
        if node.op_type.startswith("FakeQuantize_"):
            points.append((node.input[0], node.output[0]))
        elif node.op_type == "QuantizeLinear":
            dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0])
            points.append((node.input[0], dq.output[0]))
    for name in {n for point in points for n in point}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnx_latency.ort_session(model.SerializeToString(), threads=2)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, onnx_latency.feeds(session, batch))))
    return [(values[i], values[o]) for i, o in points]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--recipe", default="w4a8-fp")
    parser.add_argument("--cache", type=Path, required=True, help="the --cache of onnx_latency.py --agreement")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    model = zoo.load_model(args.model)
    batch = onnx_latency.real_batch(model, args.model, args.batch, args.seq, offset=1000)
    q = QuantizedModel.load(args.cache / f"{args.model}-{args.recipe}")
    ours = torch_quantizers(q, batch)
    theirs = onnx_quantizers(args.cache / f"{args.model}-{args.recipe}-simulate.onnx", batch)
    if len(ours) != len(theirs):
        raise SystemExit(f"the graph has {len(ours)} activation quantizers, the file {len(theirs)}")
    print(f"{'quantizer':26} {'format':8} {'input max diff':>15} {'codes differing':>18}")
    for (name, fmt, x, y), (ox, oy) in zip(ours, theirs):
        print(f"{name:26} {fmt:8} {float(np.abs(ox - x).max()):15.2e} {int((oy != y).sum()):>9} of {y.size:<7}")


if __name__ == "__main__":
    main()
