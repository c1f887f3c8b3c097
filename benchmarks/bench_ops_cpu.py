"""CPU speed of the recurrent ops, reference loop vs torch chunked (thin wrapper of attnzoo.bench.ops_cpu).

    python benchmarks/bench_ops_cpu.py              # same as `attnzoo bench ops`
    python benchmarks/bench_ops_cpu.py --ref-max-t 8192   # also time the reference at 8192 (minutes)
"""

import sys

from attnzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ops", *sys.argv[1:]]))
