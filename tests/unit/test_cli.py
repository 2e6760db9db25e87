"""Every subcommand has --help with a worked example, and bad input is a one-line error."""

import subprocess
import sys

import pytest

from gsaccel.sw.cli.main import build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_the_documented_subcommands_exist():
    assert {"pack", "unpack", "inspect", "prune", "compile", "run", "demo", "verilog", "build",
            "flash", "bench"} <= set(subcommands())


@pytest.mark.parametrize("name", subcommands())
def test_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: gsaccel {name}" in out
    assert "example:\n  gsaccel " in out


def test_unknown_subcommand_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "gsaccel.sw.cli", "frobnicate"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr


def test_docs_cli_page_is_current():
    from pathlib import Path
    from gsaccel.sw.cli.docs import render
    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for name in subcommands():
        assert f"## gsaccel {name}" in text, f"docs/cli.md has no section for {name}"
    assert text == render(), ("docs/cli.md is stale: regenerate it with "
                              "`python -m gsaccel.sw.cli.docs > docs/cli.md`")
