#!/bin/bash
# Issue #22's goals table from one `attnzoo bench speed` process (prepared 2026-12-07, fourth session). fla's
# ops must be compiled on this machine first: in the background of an earlier call on the same warm machine,
#   pip install -q --no-deps --target /tmp/site ../.whl/*.whl
#   for op in gla simple_gla delta gated_delta recurrent_delta; do (PYTHONPATH=$PWD:/tmp/site timeout 255 \
#     python3 benchmarks/fla_warm.py $op --Ts 1024,4096,16384,32768,65536 > $OUT/fla_warm_$op.log 2>&1) & done
# (carry [".gpu", ".whl"]; fla's GLA / simple_gla decode ops are not warmed by fla_warm.py: their first call
# compiles inside the timing process, which the first-call column records). Command: `cd .gpu && bash run2.sh`.
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
ls /tmp/site >/dev/null 2>&1 || pip install -q --no-deps --target /tmp/site ../.whl/*.whl
mkdir -p $OUT/speed
timeout 560 python3 -m attnzoo.cli bench speed --providers attnzoo_scalar,attnzoo_vector,attnzoo_gated_delta,attnzoo_delta,sdpa_cudnn,fla_simple_gla,fla_gla,fla_gated_delta,fla_delta --modes fwdbwd,decode --gates weak,strong --shapes 1024,4096,16384,32768,65536 --out $OUT/speed > $OUT/speed/log.txt 2>&1; tail -30 $OUT/speed/log.txt
cd $OUT && tar czf /tmp/all.tgz speed; rm -rf $OUT/*; mv /tmp/all.tgz $OUT/
