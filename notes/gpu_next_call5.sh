#!/bin/bash
# #23: does compiling the group step (inductor) give the next factor of throughput? Then the zoo's T=128 panel
# at d=64 (prepared 2026-12-07, fifth session). Command `cd .gpu && bash run5.sh`, timeout 590.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
ZT_SECONDS=250 bash benchmarks/gpu_zoo.sh throughput --paths group_graph,group_graph_compiled \
  --mixers softmax,gla,gated_deltanet,mamba,h3 --d-models 64,256 --seq-lens 64 --steps 15 --warmup 4
GRID_SECONDS=300 bash benchmarks/gpu_zoo.sh grid --grid 128:8 --d-models 64 --steps 1500 \
  --mixers "softmax;gated_deltanet;base_conv,based;mamba;deltanet;rwkv6"
cd $OUT && tar czf /tmp/all.tgz zt zt.log grid grid.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
