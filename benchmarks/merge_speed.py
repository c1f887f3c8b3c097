"""Merge the JSON lines of several `attnzoo bench speed` runs (e.g. fwd+fwdbwd with fla in one GPU
call, decode in another) into one folder: speed.jsonl (each run's machine line kept before its
records), speed.md and speed.png rebuilt from all records:

    python benchmarks/merge_speed.py OUT_DIR RUN1/speed.jsonl RUN2/speed.jsonl ...
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.bench.speed import write_report  # noqa: E402


def main(out_dir, paths):
    if not paths:
        raise SystemExit("usage: merge_speed.py OUT_DIR RUN.jsonl [RUN.jsonl ...]")
    os.makedirs(out_dir, exist_ok=True)
    lines, records = [], []
    for p in paths:
        with open(p) as f:
            for ln in f:
                if ln.strip():
                    rec = json.loads(ln)
                    lines.append(ln.rstrip("\n"))
                    if "machine" not in rec:
                        records.append(rec)
    with open(os.path.join(out_dir, "speed.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(write_report(records, out_dir))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
