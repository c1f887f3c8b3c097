#!/bin/bash
# The next device call, prepared on 2026-12-07 (fourth session): run from the root of a `git archive` copy
# carried as .gpu/ (rm -rf .gpu && mkdir .gpu && git archive HEAD | tar -x -C .gpu && cp notes/gpu_next_call1.sh
# .gpu/run1.sh; command `cd .gpu && bash run1.sh`, carry [".gpu", ".whl"], timeout 590; ~540 s; then, within the
# machine's 30 s idle release, cp notes/gpu_next_call2.sh .gpu/run2.sh and run it: fla is warm). Timings alone
# first (gpu_long_conv, gpu_norm: the fused row norms; set NORM_TRITON_AUTO if they pass and win), then
# accuracy runs sharing the GPU. If gpu_long_conv's checks pass and toeplitz wins the zoo groups,
# the copy's LONG_CONV_DIRECT is set to "toeplitz" for the grid (and should then be set in ops/conv/long.py).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT/long_conv $OUT/control $OUT/norm
python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, torch.version.cuda)"
timeout 150 python3 benchmarks/gpu_long_conv.py $OUT/long_conv --budget 130 > $OUT/long_conv/log.txt 2>&1; tail -12 $OUT/long_conv/log.txt
if python3 -c "
import json, sys
r = {x['case']: x for x in json.load(open('$OUT/long_conv/gpu_long_conv.json'))['records']}
ok = all(r.get(c, {}).get('ok') for c in ('check fp32', 'check bf16'))
win = [r.get(f'zoo {m} d=256', {}).get('speedup', 0) for m in ('h3', 'hyena', 'base_conv', 'base_conv,based')]
sys.exit(0 if ok and min(win) > 1.0 else 1)"; then
  sed -i 's/^LONG_CONV_DIRECT = "conv1d"/LONG_CONV_DIRECT = "toeplitz"/' attnzoo/ops/conv/long.py; echo "TOEPLITZ ON"
else echo "toeplitz stays off"; fi
grep -n "^LONG_CONV_DIRECT" attnzoo/ops/conv/long.py
timeout 110 python3 benchmarks/gpu_norm.py $OUT/norm --budget 100 > $OUT/norm/log.txt 2>&1; tail -9 $OUT/norm/log.txt
pip install -q --no-deps --target /tmp/site ../.whl/*.whl > $OUT/fla_install.log 2>&1  # for call 2 (carry .whl too)
for op in gla simple_gla delta gated_delta recurrent_delta; do ( PYTHONPATH=$PWD:/tmp/site timeout 270 python3 benchmarks/fla_warm.py $op --Ts 1024,4096,16384,32768,65536 > $OUT/fla_warm_$op.log 2>&1 ) & done
( timeout 280 python3 benchmarks/hybrid_ratio_mqar_steps.py --device cuda --d-model 128 --layers 2 --steps 3000 --lrs 5e-4 1e-3 2e-3 4e-3 --budget 260 --out $OUT/control/control.jsonl --plot $OUT/control/control2.png > $OUT/control/log.txt 2>&1 ) &
GRID_SECONDS=280 bash benchmarks/gpu_zoo.sh grid --grid 64:4 --d-models 256 --steps 1500 --mixers "deltanet;rwkv6;mamba2;gla"
wait
grep final $OUT/control/control.jsonl | python3 -c "import sys,json; [print(r['layers'],r['schedule'],r['lr'],r['steps'],r['stopped'],round(r['recall_hard'],3),round(r['recall_easy'],3),r['seconds']) for r in map(json.loads,sys.stdin)]"
cd $OUT && tar czf /tmp/all.tgz long_conv norm control grid grid.log fla_warm_*.log; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
