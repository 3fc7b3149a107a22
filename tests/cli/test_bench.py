"""`bitfold bench`: lists the repository's benchmarks and runs them as scripts."""

import json

from bitfold.cli.bench import default_folder, find_benchmarks
from bitfold.cli.main import main

from .conftest import run_cli


def test_list_shows_each_benchmark_with_its_summary(capsys):
    found = find_benchmarks(default_folder())
    assert "formats" in found and found["formats"].startswith("Throughput of quantize")
    code, out, _ = run_cli(capsys, "bench", "--list")
    assert code == 0
    assert all(f"{name} " in out for name in found)


def test_runs_benchmarks_in_order_with_arguments(capfd, tmp_path):
    record = tmp_path / "calls.jsonl"
    for name in ("beta", "alpha"):
        (tmp_path / f"{name}.py").write_text(
            f'"""Records its arguments."""\nimport json, sys\n'
            f'open({str(record)!r}, "a").write(json.dumps(["{name}", sys.argv[1:]]) + "\\n")\n')
    code = main(["bench", "--dir", str(tmp_path), "--args", "--numel 8192 --json 'a b.json'"])
    out = capfd.readouterr().out
    assert code == 0 and out.count("== bitfold bench") == 2
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls == [["alpha", ["--numel", "8192", "--json", "a b.json"]],
                     ["beta", ["--numel", "8192", "--json", "a b.json"]]]


def test_unknown_benchmark_and_failing_script(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "nope")
    assert code == 1 and "unknown benchmark 'nope'" in err and "formats" in err
    (tmp_path / "broken.py").write_text('"""Exits with status 3."""\nraise SystemExit(3)\n')
    code, _, err = run_cli(capsys, "bench", "--dir", tmp_path)
    assert code == 1 and "benchmark broken exited with status 3" in err
