"""The zoo's results file: one JSON object per line in <out>/results.jsonl, one line per finished run.

Writing (append_result): the file is first made to end with a newline (a sweep killed mid-write
leaves a last line without one, and a record appended to it would be glued to that fragment and
lost), then the whole record line, newline included, goes out in one write call on a file opened
for appending, and is fsynced. A kill can cut that line short but never mix it with another.

Reading (read_results): every line that is a run record is returned in file order; a line that
is not one (cut by a kill, other JSON such as `{"foo": 1}`, `null`, `[1, 2]`, `3`) is skipped and
reported on stderr (`report=True`), so `--resume` redoes that run rather than crash on it.
"""

from __future__ import annotations

import json
import os
import sys

RESULTS = "results.jsonl"
KEY_FIELDS = ("task", "mixer", "d_model", "lr", "seq_len", "num_pairs", "vocab_size")
_KEY_TYPES = {"task": str, "mixer": str, "d_model": int, "lr": (int, float), "seq_len": int, "num_pairs": int,
              "vocab_size": int}


def run_key(rec: dict) -> tuple:
    """What identifies a run: its KEY_FIELDS (lr rounded, so 1e-3 read back equals the planned 1e-3)."""
    return tuple(round(rec[k], 12) if isinstance(rec[k], float) else rec[k] for k in KEY_FIELDS)


def record_init(rec: dict) -> str:
    """The model init a record was trained with (LanguageModel's init); records from before the field are
    "default"."""
    return rec.get("init", "default")


_JSON_NAMES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}


def _of_type(x, kinds=(int, float)) -> bool:
    """isinstance, but a JSON true/false is not a number."""
    return isinstance(x, kinds) and not isinstance(x, bool)


def record_problem(obj) -> str | None:
    """Why `obj` (a parsed line) is not a run record the zoo can use, or None if it is one.

    A record is an object with every KEY_FIELDS entry of the right type and an `accuracy` that is
    null (the run failed) or a number; a record with an accuracy also has its `state_bytes` and
    `steps` (the leaderboard reads them)."""
    if not isinstance(obj, dict):
        return f"a JSON {_JSON_NAMES.get(type(obj), type(obj).__name__)}, not an object"
    missing = [k for k in KEY_FIELDS + ("accuracy",) if k not in obj]
    if missing:
        return f"an object without {', '.join(missing)}"
    wrong = [k for k, t in _KEY_TYPES.items() if not _of_type(obj[k], t)]
    if wrong:
        return f"an object whose {', '.join(wrong)} have the wrong type"
    if obj["accuracy"] is not None:
        if not _of_type(obj["accuracy"]):
            return "an object whose accuracy is neither null nor a number"
        if not all(_of_type(obj.get(k), int) for k in ("state_bytes", "steps")):
            return "a finished run's object without integer state_bytes and steps"
    return None


def read_results(path: str, *, report: bool = True) -> list[dict]:
    """The run records in `path` (none if it does not exist), in file order; other lines are
    skipped and, with report=True, listed on stderr in one message."""
    if not os.path.exists(path):
        return []
    out, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped.append((n, "not JSON (a line cut by a kill mid-write?)"))
                continue
            problem = record_problem(obj)
            if problem is None:
                out.append(obj)
            else:
                skipped.append((n, problem))
    if skipped and report:
        lines = "; ".join(f"line {n}: {why}" for n, why in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        print(f"attnzoo zoo: {path}: skipped {len(skipped)} line(s) that are not run records ({lines}); "
              "the runs they stood for are redone", file=sys.stderr)
    return out


def append_result(path: str, rec: dict):
    """Append `rec` as one line (see the module docstring): newline first if the file lacks one,
    then the whole line in one write, then fsync."""
    data = (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if not _ends_with_newline(path):
            _write_all(fd, b"\n")
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: str) -> bool:
    """True for an empty file or one whose last byte is a newline."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _write_all(fd: int, data: bytes):
    """One write call; a regular file takes it whole, a short write (disk full) goes on where it stopped."""
    while data:
        data = data[os.write(fd, data):]
