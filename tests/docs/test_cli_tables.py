"""The CLI's tables stay readable in a non-interactive 80-column log (e.g. `attnzoo list` in `make demo`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console

import attnzoo
from attnzoo.bench.table import print_registry


def _cli(*args, columns=80) -> list[str]:
    env = dict(os.environ, COLUMNS=str(columns), TERM="dumb")
    out = subprocess.run([sys.executable, "-m", "attnzoo.cli", *args], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout  # a pipe: not a terminal
    return out.splitlines()


def test_list_fits_80_columns_one_line_per_mixer():
    lines = _cli("list")
    assert max(len(line) for line in lines) <= 80
    names = attnzoo.list_mixers()
    assert len(lines) <= len(names) + 6, "cells wrapped onto extra lines"
    for name in names:
        row = [line for line in lines if line.split() and line.split()[0] == name]
        assert len(row) == 1, f"{name}: {row}"
        arxiv = attnzoo.get_card(name).paper.arxiv
        assert arxiv in row[0] and "…" not in row[0], row[0]  # the id whole, nothing cut


def test_cost_table_fits_80_columns():
    lines = _cli("cost", "--plot", "")
    assert max(len(line) for line in lines) <= 80
    assert any(line.split("│")[1].strip() == "softmax" for line in lines if line.count("│") > 2)


def test_wide_console_keeps_the_full_table():
    buf = io.StringIO()
    print_registry(2048, 512, 8, console=Console(file=buf, width=240))
    text = buf.getvalue()
    assert "complexity" in text and attnzoo.get_card("gla").paper.title in text
