"""Every subcommand has --help with examples; usage errors are one line, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from bitfold.cli.main import COMMANDS, build_parser, main
from bitfold.recipes import list_recipes

from .conftest import run_cli

NAMES = ["quantize", "export", "compile", "inspect", "report", "bench", "recipes"]


def test_every_issue_command_is_registered():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(choices) == sorted(NAMES) and len(COMMANDS) == len(NAMES)


@pytest.mark.parametrize("command", NAMES)
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: bitfold {command}" in out
    assert "examples:" in out and f"bitfold {command}" in out.split("examples:", 1)[1]


def test_top_level_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("bitfold ")


def test_installed_entry_point_runs_the_cli():
    """The `bitfold` script that `pip install` puts next to this Python runs bitfold.cli.main."""
    script = Path(sys.executable).parent / "bitfold"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: bitfold") and all(name in result.stdout for name in NAMES)
    result = subprocess.run([str(script), "bench", "nope"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("bitfold bench: error: unknown benchmark 'nope'")


def test_help_is_plain_text(capsys):
    """Docstrings become --help text without Sphinx markup (:func:`…`, ``literals``)."""
    for command in NAMES:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out and ":class:" not in out, command


def test_missing_required_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", "minilm", "--calib", "rotten-tomatoes"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--recipe" in err and "Traceback" not in err


def test_recipes_lists_every_named_recipe(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    for name, description in list_recipes().items():
        assert any(line.startswith(name + " ") and description in line for line in out.splitlines())


def test_recipes_shows_one_recipe(capsys):
    code, out, _ = run_cli(capsys, "recipes", "w4a4-fp")
    assert code == 0
    assert out.startswith("# ") and "name: w4a4-fp" in out and "preshift: true" in out


def test_unknown_recipe_is_one_line(capsys):
    code, out, err = run_cli(capsys, "recipes", "w4a4-fq")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "unknown recipe 'w4a4-fq'" in err and "w4a4-fp" in err


def test_user_error_types_resolve():
    import importlib

    from bitfold.cli.errors import _USER_ERRORS

    for module, name in _USER_ERRORS:
        assert isinstance(getattr(importlib.import_module(module), name), type), (module, name)


def test_internal_errors_say_so_and_debug_shows_the_traceback(capsys, monkeypatch):
    from bitfold.cli import recipes

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(recipes, "run", broken)
    code, _, err = run_cli(capsys, "recipes")
    assert code == 3 and "internal error (KeyError)" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["--debug", "recipes"])
