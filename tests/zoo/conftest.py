"""Fixtures for bitfold.zoo tests: each real model is loaded once per test session.

SmolLM2 is loaded from the shared cache (``$BITFOLD_CACHE`` or ``~/.cache/bitfold``),
so its one-time GGUF -> float32 conversion (~20 s) happens at most once per machine,
not once per test run.
"""

import pytest

from bitfold import zoo
from bitfold.zoo.datasets import FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def minilm():
    return zoo.load_model("minilm")


@pytest.fixture(scope="session")
def smollm2():
    return zoo.load_model("smollm2")


@pytest.fixture(scope="session")
def effnet():
    return zoo.load_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def fashion_test():
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` (or `make datasets`)"
        )
    return zoo.load_dataset("fashion-mnist", split="test")
