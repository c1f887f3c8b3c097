import pathlib
import subprocess
import sys

import pytest

import attnzoo
from attnzoo.bench.table import README_END, README_START, markdown_table
from attnzoo.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_table_is_generated_from_the_cards():
    text = (ROOT / "README.md").read_text()
    block = text[text.index(README_START) + len(README_START) : text.index(README_END)].strip()
    assert block == markdown_table(), "README table is stale: run `attnzoo list --update-readme README.md`"
    for name in attnzoo.list_mixers():
        assert f"`{name}`" in block


def test_readme_starts_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:8])
    assert "make demo" in head and "make test" in head


def test_version_and_list(capsys):
    out = subprocess.run([sys.executable, "-m", "attnzoo.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"attnzoo {attnzoo.__version__}"
    assert main(["list", "--markdown", "--seq-len", "128"]) == 0
    assert "`softmax`" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "gated_softmax" in capsys.readouterr().out


def test_zoo_mixers_split_on_semicolons_when_given_so_based_stays_whole():
    from attnzoo.cli import _zoo_mixers

    assert _zoo_mixers(None) is None
    assert _zoo_mixers("softmax, gla") == ["softmax", "gla"]
    assert _zoo_mixers("softmax;base_conv,based; gla") == ["softmax", "base_conv,based", "gla"]
    with pytest.raises(ValueError, match="';'"):
        _zoo_mixers("softmax;;gla")
