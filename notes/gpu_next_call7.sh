#!/bin/bash
# (prepared 2026-12-07, sixth session) #14's hybrid-ratio resume, second part: before carrying, put call 6's
# returned repro/hybrid-ratio/results.jsonl in .gpu/resume/. Then, with the time left, the zoo's mamba2 group
# at T=64 d=256 (it failed to launch before e7c3e29). Command `cd .gpu && bash run7.sh`, timeout 590.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
mkdir -p $OUT/repro/hybrid-ratio && cp resume/results.jsonl $OUT/repro/hybrid-ratio/
REPRO_RESUME=1 REPRO_TOTAL_SECONDS=${HR_SECONDS:-440} bash benchmarks/gpu_repro.sh hybrid-ratio | tail -5
grep -c '"kind": "run"' $OUT/repro/hybrid-ratio/results.jsonl
LEFT=$(( 570 - ($(date +%s) - T0) ))
if [ $LEFT -gt 100 ]; then
  GRID_SECONDS=$LEFT bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 256 --steps 1500 --mixers "mamba2" | tail -8
fi
cd $OUT && tar czf /tmp/all.tgz repro grid grid.log 2>/dev/null; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
