#!/bin/bash
# (prepared 2026-12-07, seventh session) In order, each step only while CALL_SECONDS last:
# (1) #23: the flat-buffer group update (c800f5d) timed against the commit before it (old/: `git archive
# c800f5d^ | tar -x -C .gpu/old`); (2) gpu_gla's checks after the axis swap and the sm_90 fix (58a172c: the
# default vector path has not run on a GPU since); (3) #22: TUNE vector_sub_factor checked and timed
# against the pairwise form; (4) the gated delta rule's kernels by time (where fla's 10-15% lead goes);
# (1a, added 2026-12-08) the group step's kernels by kind (benchmarks/gpu_group_profile.py); (1b) the compiled group step for softmax and gla; (5) #23: the GPT-2-init T=64 d=64 panel's five mixers left. Command `cd .gpu && CALL_SECONDS=N bash run12.sh`.
# Commit: axis/ -> results/axis_swap_gpu/, zt_flat/ -> results/zoo_throughput/, sub_factor/ ->
# results/sub_factor_gpu/, profile_gdn/ -> results/profile_gaps/, grid/ -> results/zoo_paper_gpt2/.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $(( ${CALL_SECONDS:-570} - ($(date +%s) - T0) - 15 )); }
mkdir -p $OUT/axis $OUT/zt_flat
for pair in old:before .:after; do tree=${pair%%:*}; name=${pair##*:}
  [ $(left) -gt 60 ] && (cd $tree && PYTHONPATH=$PWD timeout 80 python3 -m attnzoo.cli bench zoo-throughput --out $OUT/zt_flat/$name \
    --paths group_graph --mixers softmax,gla,gated_deltanet --d-models 64 --seq-lens 64 --steps 20 --warmup 4 \
    > $OUT/zt_flat/$name.log 2>&1); tail -6 $OUT/zt_flat/$name.log
done
# (1a) where a graphed group step's time goes: its kernels by kind (eager, profiled) against eager and graph ms
[ $(left) -gt 150 ] && timeout 100 python3 benchmarks/gpu_group_profile.py $OUT/group_profile > $OUT/group_profile.log 2>&1
grep -A8 "^softmax\|^gla\|^gated" $OUT/group_profile.log | head -40
[ $(left) -gt 60 ] && timeout 60 python3 benchmarks/gpu_gla.py --out $OUT/axis/gla --no-bench --only scalar_16k_D128,vector_16k_D128,vector_strong_2049_D128,varlen_vector,decode > $OUT/axis/gla.log 2>&1
tail -3 $OUT/axis/gla.log
# (1b) the compiled group step (inductor fusion of forward, backward and the flat update), softmax then gla
for m in softmax gla; do L=$(left); [ $L -gt 100 ] && timeout $(( L < 200 ? L - 20 : 180 )) python3 -m attnzoo.cli bench zoo-throughput \
  --out $OUT/zt_flat/compiled --paths group_graph,group_graph_compiled --mixers $m --d-models 64 --seq-lens 64 --steps 20 \
  --warmup 4 > $OUT/zt_flat/compiled_$m.log 2>&1; tail -4 $OUT/zt_flat/compiled_$m.log; done
L=$(left); [ $L -gt 90 ] && timeout $L python3 benchmarks/gpu_sub_factor.py $OUT/sub_factor --budget $(( L < 170 ? L - 30 : 140 )) > $OUT/sub_factor.log 2>&1; tail -14 $OUT/sub_factor.log
L=$(left); [ $L -gt 60 ] && timeout 90 python3 benchmarks/gpu_profile_gaps.py $OUT/profile_gdn --only "gated delta" > $OUT/profile_gdn.log 2>&1; grep -A12 "^gated delta rule" $OUT/profile_gdn.log | head -30
L=$(left); echo "grid budget $L s"
[ $L -gt 60 ] && ZOO_FROM=benchmarks/results/zoo_paper_gpt2/results.jsonl GRID_SECONDS=$L bash benchmarks/gpu_zoo.sh grid \
  --grid 64:4 --d-models 64 --steps 1500 --init gpt2 --mixers "softmax;gla;mamba;rwkv6;base_conv" | tail -16
cd $OUT && tar czf /tmp/all.tgz zt_flat group_profile group_profile.log sub_factor sub_factor.log profile_gdn profile_gdn.log axis grid grid.log 2>/dev/null; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
