#!/bin/bash
# (prepared 2026-12-07, sixth session) GPU check of the axis-swapped launches (e7c3e29: seqs x heads on grid
# axis 0 for every GLA / delta launch): gpu_gla's and gpu_delta's correctness checks, the speed rows of
# attnzoo_scalar / attnzoo_vector / attnzoo_gated_delta / attnzoo_delta at 1k and 16k (compare with
# results/speed_goals_h100/: times should be unchanged); then #14's hybrid-ratio resume with the time left.
# Before carrying: mkdir -p .gpu/resume && cp benchmarks/results/repro/hybrid-ratio/full-h100-3000steps/
# results.jsonl .gpu/resume/. Command `cd .gpu && bash run6.sh`, timeout 590.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
mkdir -p $OUT/axis
timeout 80 python3 benchmarks/gpu_gla.py --out $OUT/axis/gla --no-bench --only scalar_16k_D128,vector_16k_D128,vector_strong_2049_D128,gamma_4k_D64,vector_gla_8k_D128,varlen_vector,decode > $OUT/axis/gla.log 2>&1; tail -2 $OUT/axis/gla.log
timeout 75 python3 benchmarks/gpu_delta.py $OUT/axis/delta --only "check chunked,check varlen,check decode" --budget 60 > $OUT/axis/delta.log 2>&1; grep -i "check\|fail" $OUT/axis/delta.log | tail -14
timeout 70 python3 -m attnzoo.cli bench speed --providers attnzoo_scalar,attnzoo_vector,attnzoo_gated_delta,attnzoo_delta --modes fwdbwd --gates weak,strong --shapes 1024,16384 --out $OUT/axis/speed > $OUT/axis/speed.log 2>&1; tail -12 $OUT/axis/speed.log
LEFT=$(( 575 - ($(date +%s) - T0) ))
echo "hybrid-ratio budget $LEFT s"
mkdir -p $OUT/repro/hybrid-ratio && cp resume/results.jsonl $OUT/repro/hybrid-ratio/
REPRO_RESUME=1 REPRO_TOTAL_SECONDS=$LEFT bash benchmarks/gpu_repro.sh hybrid-ratio | tail -5
grep -c '"kind": "run"' $OUT/repro/hybrid-ratio/results.jsonl
cd $OUT && tar czf /tmp/all.tgz repro axis; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
