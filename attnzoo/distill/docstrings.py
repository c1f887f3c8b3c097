"""Offline English text: the docstrings of the installed Python standard library, split by file.

Every `*.py` under the stdlib folder (the same walk and exclusions as attnzoo.tasks.bytes) is
parsed with `ast`; the module, class and function docstrings are cut into paragraphs (blank-line
separated, whitespace collapsed), and a paragraph is kept when it has `min_words` to `max_words`
words and is mostly letters (no doctest or code blocks). A file goes to train or held-out by the
hash of its relative path (`attnzoo.tasks.bytes.is_validation`), so no file is in both.

    text = DocstringCorpus(max_files=None)
    text.paragraphs["train"], text.paragraphs["validation"]     # lists of str
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
import warnings

from attnzoo.tasks.bytes import EXCLUDED_DIRS, is_validation

_SPACE = re.compile(r"\s+")


def _docstrings(source: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef))]
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def _paragraphs(doc: str, min_words: int, max_words: int) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", doc):
        if ">>>" in block or "::" in block:
            continue
        text = _SPACE.sub(" ", block).strip()
        words = text.split(" ")
        if not min_words <= len(words) <= max_words:
            continue
        letters = sum(c.isalpha() or c == " " for c in text)
        if letters >= 0.85 * len(text):
            out.append(text)
    return out


class DocstringCorpus:
    def __init__(self, *, root: str | None = None, val_percent: int = 10, min_words: int = 8, max_words: int = 120,
                 max_files: int | None = None):
        if not 0 < val_percent < 100:
            raise ValueError(f"val_percent must be in (0, 100), got {val_percent}")
        self.root = root or sysconfig.get_paths()["stdlib"]
        if not os.path.isdir(self.root):
            raise ValueError(f"no standard library folder at {self.root!r}")
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
        if max_files is not None:
            files = files[:max_files]
        self.paragraphs = {"train": [], "validation": []}
        for path in files:
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            split = "validation" if is_validation(rel, val_percent) else "train"
            with open(path, encoding="utf-8", errors="replace") as f:
                source = f.read()
            for doc in _docstrings(source):
                self.paragraphs[split] += _paragraphs(doc, min_words, max_words)
        if not self.paragraphs["train"] or not self.paragraphs["validation"]:
            raise ValueError(f"too few docstrings under {self.root!r} for a train/held-out split")
