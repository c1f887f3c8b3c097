#!/bin/bash
# (prepared 2026-12-07, sixth session; ~300 s of device time left) (1) #22: the sub-chunk diagonal blocks
# factorised (TUNE vector_sub_factor) checked and timed against the pairwise form; (2) the axis-swap check;
# (3) #23: the GPT-2-init T=64 d=64 panel, first groups. Command `cd .gpu && CALL_SECONDS=N bash run11.sh`.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
timeout 120 python3 benchmarks/gpu_sub_factor.py $OUT/sub_factor --budget 70 > $OUT/sub_factor.log 2>&1; tail -12 $OUT/sub_factor.log
mkdir -p $OUT/axis
timeout 50 python3 benchmarks/gpu_gla.py --out $OUT/axis/gla --no-bench --only scalar_16k_D128,vector_16k_D128,varlen_vector,decode > $OUT/axis/gla.log 2>&1; tail -1 $OUT/axis/gla.log
timeout 40 python3 benchmarks/gpu_delta.py $OUT/axis/delta --only "check chunked,check decode" --budget 30 > $OUT/axis/delta.log 2>&1; grep "ok=" $OUT/axis/delta.log | tail -4
LEFT=$(( ${CALL_SECONDS:-570} - ($(date +%s) - T0) ))
echo "grid budget $LEFT s"
[ $LEFT -gt 40 ] && ZOO_FROM=none GRID_SECONDS=$LEFT bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 64 --steps 1500 \
  --init gpt2 --mixers "softmax;base_conv,based;gla;gated_deltanet;mamba2;mamba;deltanet;rwkv6;h3;hyena;base_conv" | tail -16
cd $OUT && tar czf /tmp/all.tgz sub_factor sub_factor.log axis grid grid.log 2>/dev/null; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
