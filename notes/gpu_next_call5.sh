#!/bin/bash
# #23 (prepared 2026-12-07, fifth session): mamba2's d=256 group again (it failed to launch a kernel there;
# the error record now names the attnzoo line), then the T=128 panel at d=64. Command `cd .gpu && bash run5.sh`,
# timeout 590. The compiled-step throughput check (`--paths group_graph,group_graph_compiled`) is the next one.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
GRID_SECONDS=120 bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 256 --steps 1500 --mixers "mamba2"
grep -h '"error"' $OUT/grid/results.jsonl | python3 -c "import sys,json; [print(json.loads(l)['error']) for l in sys.stdin]" | sort -u
cp -r $OUT/grid $OUT/grid64; cp $OUT/grid.log $OUT/grid64.log
GRID_SECONDS=360 bash benchmarks/gpu_zoo.sh grid --grid 128:8 --d-models 64 --steps 1500 \
  --mixers "softmax;gated_deltanet;base_conv,based;deltanet;rwkv6;mamba;gla;base_conv"
cd $OUT && tar czf /tmp/all.tgz grid grid.log grid64 grid64.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
