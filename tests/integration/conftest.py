"""Real pretrained models from bitfold.zoo, loaded once per test session."""

import pytest

from bitfold import zoo


@pytest.fixture(scope="session", params=["efficientnet-lite0", "minilm", "smollm2"])
def real_model(request):
    return zoo.load_model(request.param)
