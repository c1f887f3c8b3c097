"""Sequence parallelism on GPUs with NCCL (issue #21): run with torchrun on 2 and 4 GPUs.

    torchrun --nproc_per_node=2 benchmarks/sp_nccl.py --out benchmarks/results/sp_nccl
    torchrun --nproc_per_node=4 benchmarks/sp_nccl.py --out benchmarks/results/sp_nccl --million
    python benchmarks/sp_nccl.py --toy            # one process; tests run it on gloo CPU processes

Parts (rows appended to <out>/sp_nccl.jsonl by rank 0, a machine line first):
1. correctness: the sequence-parallel GLA (vector gate) and gated delta rule in bf16 from an initial state,
   and a gated_deltanet mixer, against the single-GPU op / mixer on the whole sequence (every rank
   computes the reference): outputs and gradients, relative error per tensor, bf16 tolerance 3e-2;
2. weak scaling: 16k tokens per GPU, H = 16, D = 128, GLA fwd+bwd per scheme (allscan, ring,
   allgather), with the one-GPU op on 16k tokens as the baseline; ms per step, bytes per rank;
3. strong scaling: 64k tokens in total (64k / P per GPU), the same schemes;
4. --million: a 1M-token gated_deltanet layer (d_model 2048, 16 heads of 128) split over the GPUs,
   fwd+bwd time and peak memory per GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnzoo.bench.sp import op_inputs, op_step  # noqa: E402
from attnzoo.parallel import comm, sequence_parallel, shard_bounds  # noqa: E402

SCHEMES = ("allscan", "ring", "allgather")
BF16_TOL = 3e-2


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/sp_nccl")
    p.add_argument("--toy", action="store_true", help="tiny sizes (CPU/gloo smoke run)")
    p.add_argument("--million", action="store_true", help="also the 1M-token gated_deltanet layer")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--pieces", type=int, default=4)
    p.add_argument("--parts", default="check,weak,strong", help="comma list of check, weak, strong")
    p.add_argument("--million-T", type=int, default=None,
                   help="tokens of the --million layer (default 2^20; on one GPU 2^18 measures one of 4 shards)")
    return p.parse_args(argv)


def sizes(opts):
    if opts.toy:
        S = {"check_T": 48, "weak_T": 64, "strong_T": 128, "H": 2, "D": 16, "million_T": 96, "million_d": 32,
             "million_heads": 2}
    else:
        S = {"check_T": 8192, "weak_T": 16384, "strong_T": 65536, "H": 16, "D": 128, "million_T": 2**20,
             "million_d": 2048, "million_heads": 16}
    if opts.million_T:
        S["million_T"] = opts.million_T
    return S


def device_and_dtype():
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device()), torch.bfloat16
    return torch.device("cpu"), torch.float32


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def check_ops(opts, S, device, dtype):
    """Part 1: SP op vs the one-device op on the full sequence (same seed on every rank)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    T, rows = S["check_T"], []
    a, b = shard_bounds(T, world, rank)
    for op in ("gla", "delta"):
        full = op_inputs(op, B=1, T=T, H=S["H"], D=S["D"], dtype=dtype, device=device, seed=0)
        from attnzoo.ops.delta import delta_rule
        from attnzoo.ops.linear import gated_linear_attention

        fn = gated_linear_attention if op == "gla" else delta_rule
        gen = torch.Generator().manual_seed(1)
        s0 = torch.randn(1, S["H"], S["D"], S["D"], generator=gen).to(device).requires_grad_()
        o_ref = fn(*full, initial_state=s0)[0]
        w = torch.randn(o_ref.shape, generator=gen).to(device=device, dtype=dtype)
        ref_grads = torch.autograd.grad((o_ref.float() * w.float()).sum(), [*full, s0])
        mine = [x.detach()[:, a:b].clone().requires_grad_() for x in full]
        s0_mine = s0.detach().clone().requires_grad_()
        with sequence_parallel(pieces=opts.pieces):
            o = fn(*mine, initial_state=s0_mine)[0]
        *grads, ds0 = torch.autograd.grad((o.float() * w[:, a:b].float()).sum(), [*mine, s0_mine])
        dist.all_reduce(ds0)  # the initial state is read on rank 0: its gradient is there
        errs = {"o": rel(o, o_ref[:, a:b]), "grad_initial_state": rel(ds0, ref_grads[-1])}
        errs.update({f"grad{i}": rel(g, r[:, a:b]) for i, (g, r) in enumerate(zip(grads, ref_grads))})
        rows.append(_worst({"kind": "check", "op": op, "T": T, "P": world, "dtype": str(dtype), **errs}))
    rows.append(_worst(check_mixer(S, device, dtype)))
    return rows


def check_mixer(S, device, dtype):
    import attnzoo

    rank, world = dist.get_rank(), dist.get_world_size()
    T = S["check_T"]
    torch.manual_seed(0)
    m = attnzoo.build("gated_deltanet", d_model=S["H"] * S["D"] // 2, n_heads=S["H"] // 2).to(device)
    x = torch.randn(1, T, m.d_model, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        xr = x.clone().requires_grad_()
        y_ref = m(xr)
        (dx_ref,) = torch.autograd.grad(y_ref.float().square().sum(), xr)
        a, b = shard_bounds(T, world, rank)
        xs = x[:, a:b].clone().requires_grad_()
        with sequence_parallel(model=m):
            y = m(xs)
        (dx,) = torch.autograd.grad(y.float().square().sum(), xs)
    return {"kind": "check", "op": "mixer:gated_deltanet", "T": T, "P": world, "dtype": str(dtype),
            "y": rel(y, y_ref[:, a:b]), "dx": rel(dx, dx_ref[:, a:b])}


def _worst(row):
    """The worst relative error over the row's tensors and over the ranks; ok if under BF16_TOL."""
    mine = max(v for k, v in row.items() if k in ("o", "y", "dx") or k.startswith("grad"))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    row["worst"] = max(gathered)
    row["ok"] = row["worst"] < BF16_TOL
    return row


def time_op(op, T, S, scheme, opts, device, dtype, *, sp=True):
    xs = op_inputs(op, B=1, T=T, H=S["H"], D=S["D"], dtype=dtype, device=device, seed=dist.get_rank())

    def step():
        for x in xs:
            x.grad = None
        if sp:
            op_step(op, xs, scheme=scheme, pieces=opts.pieces)
        else:  # the one-GPU op, no group
            from attnzoo.ops.linear import gated_linear_attention

            gated_linear_attention(*xs)[0].float().sum().backward()

    step()
    sync(device)
    comm.reset_stats()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(opts.repeats):
        step()
    sync(device)
    dist.barrier()
    sec = (time.perf_counter() - t0) / opts.repeats
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"seconds": sec, "bytes_sent": comm.STATS["bytes_sent"] / opts.repeats, "peak_bytes": peak}


def scaling(opts, S, device, dtype, kind):
    world, rows = dist.get_world_size(), []
    T = S["weak_T"] if kind == "weak" else max(1, S["strong_T"] // world)
    base_T = S["weak_T"] if kind == "weak" else S["strong_T"]
    if kind == "weak" or world == 1 or device.type == "cuda":
        rows.append({"kind": kind, "op": "gla", "scheme": "one-device", "P": 1, "tokens_per_rank": base_T,
                     **time_op("gla", base_T, S, None, opts, device, dtype, sp=False)})
    for scheme in SCHEMES:
        rows.append({"kind": kind, "op": "gla", "scheme": scheme, "P": world, "tokens_per_rank": T,
                     **time_op("gla", T, S, scheme, opts, device, dtype)})
    return rows


def million(opts, S, device, dtype):
    import attnzoo

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    m = attnzoo.build("gated_deltanet", d_model=S["million_d"], n_heads=S["million_heads"]).to(device)
    a, b = shard_bounds(S["million_T"], world, rank)
    x = torch.randn(1, b - a, m.d_model, device=device, requires_grad=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dist.barrier()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32), sequence_parallel(model=m):
        y = m(x)
        y.float().square().mean().backward()
    sync(device)
    dist.barrier()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    return [{"kind": "million", "mixer": "gated_deltanet", "T": S["million_T"], "P": world,
             "d_model": m.d_model, "seconds": time.perf_counter() - t0, "peak_bytes_per_rank": peaks}]


def machine(device):
    row = {"kind": "machine", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
           "python": platform.python_version(), "backend": dist.get_backend(), "world": dist.get_world_size()}
    if device.type == "cuda":
        row.update(gpu=torch.cuda.get_device_name(device), nccl=".".join(map(str, torch.cuda.nccl.version())))
    return row


def run(opts) -> list[dict]:
    """Everything, on an initialised default process group; returns rank 0's rows (others: [])."""
    S, (device, dtype) = sizes(opts), device_and_dtype()
    rows = [machine(device)]
    parts = opts.parts.split(",")
    if "check" in parts:
        rows += check_ops(opts, S, device, dtype)
    for kind in ("weak", "strong"):
        if kind in parts:
            rows += scaling(opts, S, device, dtype, kind)
    if opts.million:
        rows += million(opts, S, device, dtype)
    if dist.get_rank() == 0:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "sp_nccl.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps(r, default=str) + "\n")
        for r in rows[1:]:
            print(json.dumps(r, default=str))
        return rows
    return []


def main(argv=None):
    from attnzoo.train.distributed import finish_distributed, init_distributed

    opts = parse(argv)
    init_distributed()
    if not dist.is_initialized():  # a plain `python` run: a group of one
        import tempfile

        init = Path(tempfile.mkdtemp()) / "init"
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    try:
        rows = run(opts)
        bad = [r for r in rows if r.get("kind") == "check" and not r["ok"]]
        return 1 if bad else 0
    finally:
        finish_distributed()


if __name__ == "__main__":
    sys.exit(main())
