#!/bin/bash
# (prepared 2026-12-08, eighth session) The next session's first call, each step only while CALL_SECONDS last:
# (1) #23: the group step after the short-conv backward fix (35926ad): its kernels again (gated_deltanet's
# short_conv_bwd_kernel took 3.3 of 12.7 ms before) and the short conv's own checks and times at real shapes;
# (2) #23: the throughput table in ONE run (process, group_graph, group_graph_compiled) for softmax, gla and
# gated_deltanet at d=64 T=64, so the ratio to the process path is a same-run ratio; (3) #23: the GPT-2-init
# grid (the paper preset's init since 2026-12-08) at T=64 d=128, resuming zoo_paper_gpt2. Command
# `cd .gpu && CALL_SECONDS=N bash run13.sh`; prepare with `rm -rf .gpu && mkdir .gpu && git archive HEAD | tar -x
# -C .gpu && cp notes/gpu_next_call13.sh .gpu/run13.sh`, carry [".gpu"]. Commit: profile/ ->
# results/zoo_throughput/ (group_profile_after_conv_fix.json), short_conv/ -> results/short_conv/, zt/ ->
# results/zoo_throughput/ (throughput_same_run.jsonl), grid/ -> results/zoo_paper_gpt2/.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $(( ${CALL_SECONDS:-570} - ($(date +%s) - T0) - 15 )); }
[ $(left) -gt 60 ] && timeout 60 python3 benchmarks/gpu_group_profile.py $OUT/profile --mixers gated_deltanet,gla,softmax > $OUT/profile.log 2>&1
grep -A9 "^gated\|^softmax" $OUT/profile.log | head -24
# (1') the narrow projections on padded widths (AlignedLinear, mixers/layers.NARROW; off by default): if the
# align2 GEMM leaves and the step is faster, turn NARROW["pad"] to "cuda"
[ $(left) -gt 90 ] && timeout 50 python3 benchmarks/gpu_group_profile.py $OUT/profile_pad --mixers gated_deltanet,gla --pad-narrow > $OUT/profile_pad.log 2>&1
grep -A9 "^gated\|^gla" $OUT/profile_pad.log | head -24
[ $(left) -gt 90 ] && timeout 80 python3 benchmarks/gpu_short_conv.py $OUT/short_conv > $OUT/short_conv.log 2>&1
tail -12 $OUT/short_conv.log
L=$(left); [ $L -gt 150 ] && timeout $(( L < 300 ? L - 20 : 280 )) python3 -m attnzoo.cli bench zoo-throughput --out $OUT/zt \
  --paths process,group_graph,group_graph_compiled --mixers softmax,gla,gated_deltanet --d-models 64 --seq-lens 64 \
  --steps 20 --warmup 4 > $OUT/zt.log 2>&1; tail -6 $OUT/zt.log
L=$(left); echo "grid budget $L s"
[ $L -gt 90 ] && GRID_SECONDS=$L bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 128 --steps 1500 \
  --mixers "softmax;gla;base_conv,based;h3;hyena;base_conv;mamba;mamba2;gated_deltanet;deltanet;rwkv6" | tail -16
cd $OUT && tar czf /tmp/all.tgz profile profile.log profile_pad profile_pad.log short_conv short_conv.log zt zt.log grid grid.log 2>/dev/null; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
