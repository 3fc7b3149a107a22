"""Quantize SmolLM2-135M, compile it with TVM, and generate text with the compiled model.

    python examples/smollm2_generate_tvm.py --recipe w4a16-int-g128 --tokens 24
    python examples/smollm2_generate_tvm.py --export /tmp/smollm2-w4    # + a .so that needs only TVM

Steps: ``bitfold.quantize`` on a few Rotten Tomatoes snippets (pairs of different lengths,
so the sequence axis stays dynamic), ``bitfold.compile`` for this CPU, then greedy decoding.
The graph has no KV cache, so every step runs the whole sequence so far. The same greedy
loop runs on bitfold's PyTorch simulation of the quantized model and the script reports
whether the two generated the same tokens.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")  # no spinning workers on a shared CPU

import torch  # noqa: E402

import bitfold  # noqa: E402
from bitfold import zoo  # noqa: E402


def greedy(step, input_ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """Append ``tokens`` argmax tokens to ``input_ids`` ([1, T]) using ``step(ids, mask) -> logits``."""
    ids = input_ids
    for _ in range(tokens):
        logits = step(ids, torch.ones_like(ids))
        ids = torch.cat([ids, torch.as_tensor(logits)[:, -1:].argmax(-1)], dim=1)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="w4a16-int-g128")
    parser.add_argument("--prompt", default="The old lighthouse keeper climbed the stairs and")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--target", default="llvm -mcpu=native")
    parser.add_argument("--export", help="also write the compiled model to this directory")
    args = parser.parse_args()

    lm = zoo.load_model("smollm2")
    texts = list(zoo.split(zoo.load_dataset("rotten-tomatoes"), n_calib=8, seed=0)[0].items)
    calibration = [lm.preprocess(texts[i:i + 2]) for i in range(0, 8, 2)]
    start = time.perf_counter()
    quantized = bitfold.quantize(lm.module, args.recipe, calibration, progress=False)
    print(f"quantized with {args.recipe} in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    compiled = bitfold.compile(quantized, args.target)
    print(f"compiled for {args.target!r} in {time.perf_counter() - start:.0f} s: {compiled}")

    prompt = lm.tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    start = time.perf_counter()
    ids = greedy(compiled, prompt, args.tokens)
    seconds = time.perf_counter() - start
    print(f"\nTVM ({args.tokens / seconds:.1f} tokens/s without a KV cache):")
    print(lm.tokenizer.decode(ids[0], skip_special_tokens=True))

    reference = greedy(quantized, prompt, args.tokens)
    same = torch.equal(ids, reference)
    print(f"\nthe PyTorch simulation generates the same tokens: {same}")
    if not same:
        print(lm.tokenizer.decode(reference[0], skip_special_tokens=True))
    if args.export:
        print(f"exported to {compiled.export(args.export, overwrite=True)}")


if __name__ == "__main__":
    main()
