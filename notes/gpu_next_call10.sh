#!/bin/bash
# (prepared 2026-12-07, sixth session; budget for one call left) (1) a short GPU check of the axis-swapped
# GLA / delta launches (e7c3e29); (2) #23: the compiled group step (inductor + CUDA graph) against the graphed
# eager step at d=64, T=64 (all mixers trace equal to eager on the CPU: tests/train/test_group_compile.py);
# (3) the T=64 d=64 panel with GPT-2 init (fresh folder) with the time left. Command `cd .gpu && bash run10.sh`,
# timeout 590. Commit: axis/ -> results/axis_swap_gpu/, zt/ -> results/zoo_throughput/ (compiled),
# grid/ -> results/zoo_paper_gpt2/.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
mkdir -p $OUT/axis
timeout 55 python3 benchmarks/gpu_gla.py --out $OUT/axis/gla --no-bench --only scalar_16k_D128,vector_16k_D128,vector_strong_2049_D128,varlen_vector,decode > $OUT/axis/gla.log 2>&1; tail -1 $OUT/axis/gla.log
timeout 45 python3 benchmarks/gpu_delta.py $OUT/axis/delta --only "check chunked,check decode" --budget 35 > $OUT/axis/delta.log 2>&1; grep "ok=" $OUT/axis/delta.log | tail -4
ZT_SECONDS=${ZT_SECONDS:-200} bash benchmarks/gpu_zoo.sh throughput --paths group_graph,group_graph_compiled --mixers softmax,gla,gated_deltanet --d-models 64 --seq-lens 64 --steps 15 --warmup 4 | tail -12
LEFT=$(( ${CALL_SECONDS:-570} - ($(date +%s) - T0) ))
echo "grid budget $LEFT s"
ZOO_FROM=none GRID_SECONDS=$LEFT bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 64 --steps 1500 \
  --init gpt2 --mixers "softmax;base_conv,based;gla;gated_deltanet;mamba2;mamba;deltanet;rwkv6;h3;hyena;base_conv" | tail -16
cd $OUT && tar czf /tmp/all.tgz axis zt zt.log grid grid.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
