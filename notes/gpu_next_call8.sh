#!/bin/bash
# (prepared 2026-12-07, sixth session) #23: the paper preset's T=64, d=64 panel with Zoology's GPT-2 init
# (`--init gpt2`) into a fresh folder, to set beside zoo_paper/ (default init) before the preset switches.
# Command `cd .gpu && bash run8.sh`, timeout 590; commit $OUT/grid as benchmarks/results/zoo_paper_gpt2/.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
ZOO_FROM=none GRID_SECONDS=${GRID_SECONDS:-560} bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 64 --steps 1500 \
  --init gpt2 --mixers "softmax;base_conv,based;gla;gated_deltanet;mamba;deltanet;mamba2;rwkv6;h3;hyena;base_conv"
cd $OUT && tar czf /tmp/all.tgz grid grid.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
