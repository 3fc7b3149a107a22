"""benchmarks/accuracy.py's own logic on a tiny model: rows, table, JSON, cache, presets, probe."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = _load("bitfold_benchmark_accuracy", BENCHMARKS / "accuracy.py")  # puts benchmarks/ on sys.path
from accuracy_tasks import Metric, Task, assert_disjoint  # noqa: E402
from accuracy_tasks.probe import fit_probe  # noqa: E402


def _tiny_task(*_args) -> Task:
    """A two-layer MLP; the metric is the agreement of its argmax with the float model's."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(256, 32)
    calibration = [(x[i:i + 32],) for i in range(0, 64, 32)]
    held_out = x[64:]
    with torch.no_grad():
        reference = module(held_out).argmax(1)

    def evaluate(run):
        return {"agree": float((run(held_out).argmax(1) == reference).double().mean())}

    return Task("tiny", module, calibration, evaluate, (Metric("agree", "agree", 3),), {"rows": 256},
                notes=["tiny: a random MLP"])


@pytest.mark.slow
def test_runs_rows_writes_json_and_reuses_cached_models(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(accuracy, "build_task", _tiny_task)
    args = ["--models", "fmnist-cnn", "--recipes", "fp32,w8a8-int,w2a16-int-split", "--cache", str(tmp_path / "c"),
            "--json", str(tmp_path / "out.json")]
    assert accuracy.main(args) == 0
    first = json.loads((tmp_path / "out.json").read_text())
    rows = first["models"]["fmnist-cnn"]["rows"]
    assert list(rows) == ["fp32", "w8a8-int", "w2a16-int-split"]
    assert rows["fp32"] == {"agree": 1.0, "bits_per_weight": 32.0, "eval_seconds": rows["fp32"]["eval_seconds"]}
    assert rows["w8a8-int"]["agree"] > 0.9 and 8 <= rows["w8a8-int"]["bits_per_weight"] < 9
    assert rows["w2a16-int-split"]["bits_per_weight"] > 4  # 2-bit codes + cluster ids + per-cluster ranges
    assert not rows["w8a8-int"]["from_cache"] and rows["w8a8-int"]["layers_quantized"] == 2
    assert first["environment"]["load_average_end"] and first["settings"]["recipes"] == args[3].split(",")
    out = capsys.readouterr().out
    assert "| recipe | fmnist-cnn agree | fmnist-cnn bits/w | fmnist-cnn quant s |" in out
    assert "- tiny: a random MLP" in out and out.count("\n| w") == 2

    assert accuracy.main(args) == 0
    second = json.loads((tmp_path / "out.json").read_text())["models"]["fmnist-cnn"]["rows"]
    for label in ("w8a8-int", "w2a16-int-split"):
        assert second[label]["from_cache"]
        assert second[label]["agree"] == rows[label]["agree"]
        assert second[label]["quantize_seconds"] == rows[label]["quantize_seconds"]
    assert "* quantized model loaded from --cache" in capsys.readouterr().out


def test_presets_expand_and_unknown_recipes_fail_before_any_work(monkeypatch):
    assert accuracy.recipe_list("w4a4-int,fp32", "splitquant") == [
        "fp32", "w2a16-int", "w2a16-int-split", "w3a16-int", "w3a16-int-split", "w4a16-int", "w4a4-int"]
    assert {"w4a4-fp", "w4a4-fp-paper", "w4a4-fp-fpq", "w4a4-int-smooth"} <= set(accuracy.PRESETS["llmfp4"])
    monkeypatch.setattr(accuracy, "build_task", lambda *a: pytest.fail("built a task for a bad recipe list"))
    with pytest.raises(ValueError, match="unknown recipe 'w5a5-nope'"):
        accuracy.main(["--models", "minilm", "--recipes", "fp32,w5a5-nope"])
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--models", "resnet", "--recipes", "fp32"])


def test_disjointness_is_checked():
    assert_disjoint("ok", [1, 2], [3])
    with pytest.raises(AssertionError, match="1 item"):
        assert_disjoint("windows", [1, 2], [2, 3])


def test_probe_separates_a_linear_concept_and_picks_c_by_cross_validation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    probe = fit_probe(x[:300], labels[:300])
    assert probe.accuracy(x[300:], labels[300:]) > 0.95
    assert probe.C in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert probe.accuracy(x[300:], 1 - labels[300:]) < 0.05
