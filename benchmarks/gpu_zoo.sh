#!/bin/bash
# One device call for issue #23: the zoo's throughput bench, then a slice of the paper grid.
# usage: bash benchmarks/gpu_zoo.sh <throughput|grid> [zoo args...]; results under $OUT (and kept in
# benchmarks/results/zoo_paper/ of the copy, which the caller commits from $OUT).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, torch.version.cuda)"
what=$1; shift
if [ "$what" = throughput ]; then
  timeout "${ZT_SECONDS:-330}" python3 -m attnzoo.cli bench zoo-throughput --out "$OUT/zt" "$@" 2>&1 | tail -n 60 > "$OUT/zt.log"
  tail -n 45 "$OUT/zt.log"
else
  mkdir -p "$OUT/grid"
  # ZOO_FROM: the committed results to resume (default zoo_paper_gpt2's, the paper preset's init since 2026-12-08;
  # zoo_paper's with --init default; "none": a fresh folder)
  from=${ZOO_FROM:-benchmarks/results/zoo_paper_gpt2/results.jsonl}
  [ "$from" != none ] && [ -f "$from" ] && cp "$from" "$OUT/grid/results.jsonl"
  timeout "${GRID_SECONDS:-500}" python3 -m attnzoo.cli zoo --preset paper --out "$OUT/grid" --resume "$@" \
    > "$OUT/grid.log" 2>&1
  echo "zoo rc=$?"
  tail -n 30 "$OUT/grid.log"
  python3 - "$OUT/grid/results.jsonl" <<'PY'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = collections.defaultdict(float)
for r in rows:
    if r.get("accuracy") is not None:
        k = (r["mixer"], r["seq_len"], r["d_model"])
        best[k] = max(best[k], r["accuracy"])
print(len(rows), "records")
for k in sorted(best):
    print(*k, round(best[k], 3))
PY
fi
