#!/bin/bash
# call 2: the speed table with fla in both gate regimes, then the delta-rule layers against fla's (fla warmed by call 1)
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
if [ -e /tmp/safe80_ok ]; then sed -i 's/^SAFE_LOG = tl.constexpr(20.0)/SAFE_LOG = tl.constexpr(80.0)/' attnzoo/ops/linear/triton/safe.py; fi
grep -n "^SAFE_LOG" attnzoo/ops/linear/triton/safe.py | tee $OUT/safe_log.txt
ls /tmp/site >/dev/null 2>&1 || pip install -q --no-deps --target /tmp/site ../.whl/*.whl
mkdir -p $OUT/speed $OUT/delta
timeout 370 python3 -m attnzoo.cli bench speed --providers attnzoo_scalar,attnzoo_vector,sdpa_cudnn,fla_simple_gla,fla_gla --modes fwdbwd,fwd --gates weak,strong --shapes 1024,4096,16384 --out $OUT/speed > $OUT/speed/log.txt 2>&1; tail -30 $OUT/speed/log.txt
timeout 190 python3 benchmarks/gpu_delta.py $OUT/delta --only "mixer,time decode" --budget 180 > $OUT/delta/log.txt 2>&1; tail -12 $OUT/delta/log.txt
cd $OUT && tar czf /tmp/all.tgz safe_log.txt speed delta; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
