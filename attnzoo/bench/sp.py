"""`attnzoo bench sp`: sequence parallelism (issue #20) — time per fwd+bwd and bytes sent per rank
against the number of ranks P, for All-Scan (ZeCO), the ring (LASP-1) and the all-gather (LASP-2).

    run_sp_bench(worlds=(1, 2, 3, 4), out="benchmarks/results/sp")   # gloo processes on this CPU

For each P, P gloo processes are started (forkserver, file rendezvous) and measure
- op rows: the sequence-parallel op (GLA with a vector gate, gated delta rule) fwd+bwd on
  `tokens_per_rank` tokens per rank (weak scaling), every scheme; seconds per step (barrier, n steps,
  barrier; the median of interleaved rounds) and the bytes each rank sent (attnzoo.parallel.comm);
- comm rows: one forward state scan alone, states of several sizes, ring / allscan (n pieces) /
  allgather; per repeat the time from the first rank's start to the last rank's end (the ranks share
  one clock), median over repeats.
Rows are appended to <out>/sp.jsonl after each P (a machine line first); `sp_report.write_report`
fits the alpha-beta model of `attnzoo.parallel.comm_model` to the comm rows and writes sp.md and sp.png.
The same timing code runs on GPUs with NCCL under torchrun (benchmarks/sp_nccl.py).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

OPS = ("gla", "delta")


def op_inputs(op: str, *, B: int, T: int, H: int, D: int, dtype=torch.float32, device="cpu", seed: int = 0):
    """Leaf inputs of one shard: gla (q, k, v, vector gate) or delta (q, k, v, beta, scalar gate)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if op == "gla":
        xs = [q, k, v, F.logsigmoid(rnd(B, T, H, D) + 3.0) / 4]
    elif op == "delta":
        xs = [q, F.normalize(k.float(), dim=-1).to(dtype), v, torch.sigmoid(rnd(B, T, H)), -0.1 * torch.rand(
            B, T, H, generator=gen).to(device=device, dtype=dtype)]
    else:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return [x.requires_grad_() for x in xs]


def op_step(op: str, xs, *, scheme: str, pieces: int, overlap=None, group=None, timeout: float = 300.0):
    """One fwd+bwd of the sequence-parallel op on this rank's shard; scheme "local": the single-device
    op on the shard alone (no communication, not the sequence's result: the compute floor at this P)."""
    if scheme == "local":
        from attnzoo.ops.delta import delta_rule
        from attnzoo.ops.linear import gated_linear_attention

        o, _ = (gated_linear_attention if op == "gla" else delta_rule)(*xs)
    else:
        from attnzoo.parallel import delta_rule, gated_linear_attention

        fn = gated_linear_attention if op == "gla" else delta_rule
        o, _ = fn(*xs, scheme=scheme, pieces=pieces, overlap=overlap, group=group, timeout=timeout)
    o.float().sum().backward()


def timed_steps(step, repeats: int, group=None, sync=None) -> float:
    """Seconds per step: one warm-up, barrier, `repeats` steps, barrier (the slowest rank's view)."""
    step()
    if sync:
        sync()
    dist.barrier(group)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if sync:
        sync()
    dist.barrier(group)
    return (time.perf_counter() - t0) / repeats


def scan_latency(state_bytes: int, scheme: str, pieces: int, repeats: int, *, device="cpu", group=None) -> float:
    """Median seconds of one forward state scan (first rank's start to last rank's end)."""
    from attnzoo.parallel.allscan import AffineScan
    from attnzoo.parallel.context import SPConfig

    cfg = SPConfig.make(group, scheme=scheme, pieces=pieces, overlap=False, timeout=300.0)
    V = max(1, state_bytes // (64 * 4))
    a = torch.rand(1, 1, 64, 1, device=device)
    b = torch.randn(1, 1, 64, V, device=device)
    scan = AffineScan(cfg, dense=False, what="bench scan")
    scan.forward(a, b, None).wait()  # warm-up (connections, buffers)
    starts, ends = [], []
    for _ in range(repeats):
        dist.barrier(group)
        starts.append(time.perf_counter())
        scan.forward(a, b, None).wait()
        if device != "cpu":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    t = torch.tensor([starts, ends], dtype=torch.float64)
    parts = [torch.empty_like(t) for _ in range(cfg.world)]
    dist.all_gather(parts, t, group=group)
    allt = torch.stack(parts)  # [P, 2, repeats]
    lat = allt[:, 1].max(0).values - allt[:, 0].min(0).values
    return float(lat.median())


def bench_rank(rank: int, world: int, plan: dict) -> list[dict]:
    """Everything one rank measures for one P; rank 0's list is the result (others return []).
    The variants of one (op, shape) are timed in `rounds` interleaved rounds, each in a rotated order,
    and the median round is reported (a shared machine's load comes and goes)."""
    from attnzoo.parallel import comm

    rows = []
    for op in plan["ops"]:
        for cfgname, shape in plan["op_shapes"].items():
            xs = op_inputs(op, B=1, T=shape["T"], H=shape["H"], D=shape["D"], seed=rank)
            variants = list(plan["variants"])
            times, sent = {v: [] for v in variants}, {}
            for rnd in range(plan["rounds"]):
                for scheme, overlap in variants[rnd % len(variants):] + variants[:rnd % len(variants)]:
                    def step(op=op, xs=xs, scheme=scheme, overlap=overlap):
                        for x in xs:
                            x.grad = None
                        op_step(op, xs, scheme=scheme, pieces=plan["pieces"], overlap=overlap)

                    comm.reset_stats()
                    times[(scheme, overlap)].append(timed_steps(step, plan["repeats"]))
                    sent[(scheme, overlap)] = comm.STATS["bytes_sent"] / (plan["repeats"] + 1)
            for scheme, overlap in variants:
                mine = torch.tensor([sent[(scheme, overlap)]], dtype=torch.float64)
                per_rank = [torch.empty_like(mine) for _ in range(world)]
                dist.all_gather(per_rank, mine)
                rounds = times[(scheme, overlap)]
                rows.append({"kind": "op", "op": op, "shape": cfgname, "scheme": scheme, "P": world,
                             "overlap": overlap if scheme not in ("ring", "local") else False,
                             "tokens_per_rank": shape["T"], "H": shape["H"], "D": shape["D"],
                             "pieces": plan["pieces"], "state_bytes": shape["H"] * shape["D"] * shape["D"] * 4,
                             "map_bytes": shape["H"] * shape["D"] * (shape["D"] if op == "delta" else 1) * 4,
                             "seconds": statistics.median(rounds), "rounds": rounds,
                             "bytes_sent_max": max(float(x) for x in per_rank),
                             "bytes_sent_mean": sum(float(x) for x in per_rank) / world,
                             "loadavg_1m": os.getloadavg()[0]})
    if world > 1:
        for M in plan["comm_bytes"]:
            for scheme, pieces in plan["comm_schemes"]:
                lat = scan_latency(M, scheme, pieces, plan["comm_repeats"])
                rows.append({"kind": "comm", "scheme": scheme, "pieces": pieces, "P": world, "state_bytes": M,
                             "map_bytes": 64 * 4, "seconds": lat})
    return rows if rank == 0 else []


def _entry(rank, world, init_file, plan, out_file):
    torch.set_num_threads(plan["threads"])
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = bench_rank(rank, world, plan)
        if rank == 0:
            Path(out_file).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def run_world(world: int, plan: dict, *, timeout: float = 3600.0) -> list[dict]:
    """Start `world` gloo processes on this machine, return rank 0's rows."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "rows.json")
        ctx = mp.get_context("forkserver")  # ranks forked from one server that imported torch once
        ctx.set_forkserver_preload(["torch", "torch.distributed", "attnzoo.parallel", "attnzoo.bench.sp"])
        procs = [ctx.Process(target=_entry, args=(r, world, init_file, plan, out_file)) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
            p.join()
        if alive or any(p.exitcode for p in procs) or not os.path.exists(out_file):
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"bench sp: the {world} gloo processes failed (exit codes {codes})")
        return json.loads(Path(out_file).read_text())


DEFAULT_PLAN = {
    "ops": OPS,
    # (scheme, overlap): None = the default (on CPU: the scan before the local pass), True = beside it
    # in a thread (what CUDA does with a side stream)
    "variants": (("local", False), ("allscan", None), ("allscan", True), ("ring", False), ("allgather", None),
                 ("allgather", True)),
    "op_shapes": {"compute": {"T": 1024, "H": 4, "D": 64}, "state": {"T": 128, "H": 8, "D": 128}},
    "pieces": 4,
    "repeats": 3,
    "rounds": 3,
    "threads": 1,
    "comm_bytes": (16 * 1024, 256 * 1024, 4 * 1024 * 1024),
    "comm_schemes": (("ring", 1), ("allscan", 4), ("allscan", 16), ("allgather", 1)),
    "comm_repeats": 15,
}


def run_sp_bench(worlds=(1, 2, 3, 4), *, out="benchmarks/results/sp", plan: dict | None = None,
                 report: bool = True, echo=print) -> list[dict]:
    """Measure every P in `worlds` (JSON lines appended to <out>/sp.jsonl), then write the report."""
    from attnzoo.bench.ops_cpu import machine_line

    plan = {**DEFAULT_PLAN, **(plan or {})}
    if any(int(w) < 1 for w in worlds):
        raise ValueError(f"worlds must be positive process counts, got {worlds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:8]
    machine = {**machine_line(run_id), "backend": "gloo", "device": "cpu", "threads_per_rank": plan["threads"],
               "plan": {k: v for k, v in plan.items()}}
    rows = [machine]
    with open(out / "sp.jsonl", "a") as f:
        f.write(json.dumps(machine) + "\n")
    for world in worlds:
        t0 = time.perf_counter()
        got = [{**r, "run_id": run_id} for r in run_world(int(world), plan)]
        with open(out / "sp.jsonl", "a") as f:
            for r in got:
                f.write(json.dumps(r) + "\n")
        rows += got
        ops = [r for r in got if r["kind"] == "op"]
        summary = ", ".join(f"{r['op']}/{r['shape']}/{r['scheme']} {1e3 * r['seconds']:.1f} ms" for r in ops[:6])
        echo(f"P={world}: {len(got)} rows in {time.perf_counter() - t0:.0f} s ({summary}, ...)")
    if report:
        from attnzoo.bench.sp_report import write_report

        write_report(out, run_id=run_id, echo=echo)
    return rows
