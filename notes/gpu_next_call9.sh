#!/bin/bash
# (prepared 2026-12-07, sixth session, after refusals left ~one call) the axis-swap check of call 6 (short),
# then call 8's GPT-2-init T=64 d=64 panel with the time left. Command `cd .gpu && bash run9.sh`, timeout 590.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
mkdir -p $OUT/axis
timeout 75 python3 benchmarks/gpu_gla.py --out $OUT/axis/gla --no-bench --only scalar_16k_D128,vector_16k_D128,vector_strong_2049_D128,gamma_4k_D64,vector_gla_8k_D128,varlen_vector,decode > $OUT/axis/gla.log 2>&1; tail -1 $OUT/axis/gla.log
timeout 60 python3 benchmarks/gpu_delta.py $OUT/axis/delta --only "check chunked,check varlen,check decode" --budget 50 > $OUT/axis/delta.log 2>&1; grep -i "ok\|fail\|error" $OUT/axis/delta.log | tail -8
timeout 50 python3 -m attnzoo.cli bench speed --providers attnzoo_scalar,attnzoo_gated_delta --modes fwdbwd --gates weak,strong --shapes 1024,16384 --out $OUT/axis/speed > $OUT/axis/speed.log 2>&1; tail -8 $OUT/axis/speed.log
LEFT=$(( 565 - ($(date +%s) - T0) ))
echo "grid budget $LEFT s"
ZOO_FROM=none GRID_SECONDS=$LEFT bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 64 --steps 1500 \
  --init gpt2 --mixers "softmax;base_conv,based;gla;gated_deltanet;mamba2;mamba;deltanet;rwkv6;h3;hyena;base_conv" | tail -16
cd $OUT && tar czf /tmp/all.tgz axis grid grid.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
