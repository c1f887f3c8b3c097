"""The generated reference pages (docs/): in sync with the registry, their snippets run, `attnzoo card`."""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

import attnzoo
from attnzoo.bench.docs import generated_docs, mixer_page, usage_snippet
from attnzoo.cli import main

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


def test_docs_folder_is_in_sync_with_the_generator():
    pages = generated_docs()
    def on_disk(rel):
        path = os.path.join(DOCS, rel)
        return open(path, encoding="utf-8").read() if os.path.exists(path) else None

    stale = [rel for rel, text in pages.items() if on_disk(rel) != text]
    extra = sorted(f"mixers/{f}" for f in os.listdir(os.path.join(DOCS, "mixers")) if f"mixers/{f}" not in pages)
    assert not stale and not extra, (f"docs/ out of date (stale: {stale}, no mixer: {extra}); "
                                     "run `attnzoo card --write-docs docs`")


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


@pytest.mark.parametrize("name", attnzoo.list_mixers())
def test_usage_snippet_runs(name):
    page = mixer_page(name)
    assert "## Usage" in page and usage_snippet(name) in _python_blocks(page.split("## Usage")[1])[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(usage_snippet(name), f"<docs/mixers/{name}.md>", "exec"), {})
    if attnzoo.get_card(name).decode:  # the snippet's own continuation check ran, and printed the bytes
        assert f"{attnzoo.build(name, d_model=32, **attnzoo.get_card(name).example_kwargs).state_bytes(12)} bytes" \
            in out.getvalue()


def test_snippet_checks_fail_on_a_wrong_state():
    """The continuation check in a snippet is real: a state from a different prefix fails it."""
    bad = usage_snippet("gla").replace("y2 = m(x[:, 7:], state=state)", "y2 = m(x[:, 7:])")
    with pytest.raises(AssertionError):
        exec(compile(bad, "<bad>", "exec"), {})


def test_page_states_the_card_and_paper():
    page = mixer_page("sliding_window")
    card = attnzoo.get_card("sliding_window")
    assert card.paper.title in page and f"arxiv.org/abs/{card.paper.arxiv}" in page
    assert "y_t = sum_{s=t-w+1..t}" in page           # the module docstring's formula
    assert "`k`: `[1, 8, 4, 8]` float32" in page        # the returned state's fields (window 8)
    assert "| `window` | `64` |" in page                # constructor defaults
    assert "No decoding (not causal)" in mixer_page("routing_balanced")


def test_card_cli_prints_the_page(capsys):
    assert main(["card", "gla"]) == 0
    assert capsys.readouterr().out == mixer_page("gla") + "\n"
    assert main(["card", "glaa"]) == 2
    assert "did you mean gla" in capsys.readouterr().err
