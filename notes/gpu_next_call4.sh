#!/bin/bash
# #14's hybrid-ratio, the whole matrix resumed from the 14 runs on record (prepared 2026-12-07, fifth session).
# Before carrying: mkdir -p .gpu/resume && cp benchmarks/results/repro/hybrid-ratio/full-h100-3000steps/results.jsonl
# .gpu/resume/ (or the previous call's results.jsonl, to resume a resumed run). Command `cd .gpu && bash run4.sh`,
# timeout 590; the study records each run as it finishes, so a cut call keeps what it finished.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT/repro/hybrid-ratio && cp resume/results.jsonl $OUT/repro/hybrid-ratio/
REPRO_RESUME=1 REPRO_TOTAL_SECONDS=540 bash benchmarks/gpu_repro.sh hybrid-ratio
grep -c '"kind": "run"' $OUT/repro/hybrid-ratio/results.jsonl
cd $OUT && tar czf /tmp/all.tgz repro; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
