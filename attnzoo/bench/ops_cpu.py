"""CPU speed of the recurrent ops: the loop-over-time reference against the torch chunked path.

Times `gated_linear_attention` (vector gate [B, T, H, K] and scalar gate [B, T, H]) and the
gated `delta_rule` at B=1, H=4, K=V=64 for several T, forward (no grad) and forward+backward
(random upstream gradients on o and the final state), through the public ops with
impl="reference" / impl="torch". Prints a table with the speed-up (reference / torch) and the
T-scaling time(T_max) / time(T_prev), and appends JSON lines to `out`: one machine line (CPU
model, cores, torch version and threads, load average: the machine may be shared), then one line
per finished measurement (wall and CPU seconds). The reference forward runs at every T; its
fwd+bwd only up to `ref_max_t` (at 8192 it takes minutes); above that the row says 'reference at
T not run' and gives an estimate (power law through the two largest T run), marked '~'.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

OPS = ("gla_vector_gate", "gla_scalar_gate", "gated_delta_rule")
MODES = ("fwd", "fwd+bwd")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files differ from it; None outside a git tree."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def machine_line(run_id: str) -> dict:
    return {"git": git_revision(),
        "kind": "machine", "run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def make_inputs(op: str, *, B: int, T: int, H: int, D: int, grad: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen)
    k = F.normalize(torch.randn(B, T, H, D, generator=gen), dim=-1)
    v = torch.randn(B, T, H, D, generator=gen)
    if op == "gla_vector_gate":
        xs = [q, k, v, F.logsigmoid(torch.randn(B, T, H, D, generator=gen) + 3.0)]
    elif op == "gla_scalar_gate":
        xs = [q, k, v, F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0)]
    elif op == "gated_delta_rule":
        xs = [q, k, v, torch.sigmoid(torch.randn(B, T, H, generator=gen)),
              F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0)]
    else:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return [x.requires_grad_(grad) for x in xs]


def call_op(op: str, xs, impl: str):
    if op == "gated_delta_rule":
        from attnzoo.ops.delta import delta_rule

        return delta_rule(*xs, output_final_state=True, impl=impl)
    from attnzoo.ops.linear import gated_linear_attention

    return gated_linear_attention(*xs, output_final_state=True, impl=impl)


def time_once(op: str, impl: str, mode: str, *, B: int, T: int, H: int, D: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    xs = make_inputs(op, B=B, T=T, H=H, D=D, grad=mode == "fwd+bwd")
    gen = torch.Generator().manual_seed(1)
    if mode == "fwd+bwd":  # upstream gradients made outside the timed region
        shapes = [(B, T, H, D), (B, H, D, D)]
        grads_out = [torch.randn(sh, generator=gen) for sh in shapes]
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "fwd":
        with torch.no_grad():
            call_op(op, xs, impl)
    else:
        torch.autograd.backward(list(call_op(op, xs, impl)), grads_out)
    return time.perf_counter() - t0, time.process_time() - c0


def run_ops_bench(
    *, seq_lens=(512, 2048, 8192), ops=OPS, modes=MODES, batch=1, heads=4, head_dim=64,
    repeats=3, ref_max_t=2048, threads=None, out="benchmarks/results/ops_cpu.jsonl", echo=print,
) -> list[dict]:
    """Run the sweep; return the result rows (also appended to `out` as JSON lines).

    The torch path is timed `repeats` times and the fastest kept (the least disturbed by other
    work on the machine); the reference once. `threads` sets torch's CPU threads (None: leave it).
    """
    seq_lens = tuple(sorted(seq_lens))
    for op in ops:
        if op not in OPS:
            raise ValueError(f"ops must be among {OPS}, got {op!r}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes must be among {MODES}, got {mode!r}")
    if not seq_lens or min(seq_lens) < 1 or repeats < 1:
        raise ValueError(f"seq_lens must be positive ints and repeats >= 1, got {seq_lens}, {repeats}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    run_id = uuid.uuid4().hex[:8]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(row):
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    machine = machine_line(run_id)
    write(machine)
    echo(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
         f"({machine['torch_threads']} threads), load average {machine['loadavg_1m_at_start']}")
    shape = {"B": batch, "H": heads, "D": head_dim}
    rows = []
    for op in ops:
        for mode in modes:
            for impl in ("torch", "reference"):
                warm_t = min(seq_lens) if impl == "torch" else min(32, min(seq_lens))
                time_once(op, impl, mode, T=warm_t, **shape)  # warm-up (allocator, lazy imports)
                for T in seq_lens:
                    if impl == "reference" and mode == "fwd+bwd" and T > ref_max_t:
                        echo(f"  {op:17s} {mode:8s} reference T={T:5d}: not run (ref_max_t={ref_max_t})")
                        continue
                    n = repeats if impl == "torch" else 1
                    wall, cpu = min(time_once(op, impl, mode, T=T, **shape) for _ in range(n))
                    row = {"kind": "result", "run_id": run_id, "op": op, "impl": impl, "mode": mode,
                           "T": T, **shape, "seconds": wall, "cpu_seconds": cpu, "repeats": n,
                           "loadavg_1m": round(os.getloadavg()[0], 2)}
                    write(row)
                    rows.append(row)
                    echo(f"  {op:17s} {mode:8s} {impl:9s} T={T:5d}: {wall * 1e3:10.1f} ms "
                         f"(CPU {cpu * 1e3:.1f} ms, load {row['loadavg_1m']})")
    for line in summary_lines(rows, seq_lens, ref_max_t):
        echo(line)
    return rows


def extrapolate(times: dict, cpu: dict, op_mode, ran: list, T: int):
    """Reference time at T from a power law through its two largest measured T (linear if one)."""
    op, mode = op_mode
    hi = times.get((op, mode, "reference", ran[-1]))
    if hi is None:
        return None
    if len(ran) < 2 or not times.get((op, mode, "reference", ran[-2])):
        return hi * T / ran[-1]
    lo = times[(op, mode, "reference", ran[-2])]
    exponent = math.log(hi / lo) / math.log(ran[-1] / ran[-2])
    return hi * (T / ran[-1]) ** exponent


def summary_lines(rows: list[dict], seq_lens, ref_max_t: int) -> list[str]:
    """A plain-text table: wall times, speed-up reference/torch (wall and CPU time), T-scaling."""
    t = {(r["op"], r["mode"], r["impl"], r["T"]): r["seconds"] for r in rows}
    c = {(r["op"], r["mode"], r["impl"], r["T"]): r.get("cpu_seconds") for r in rows}
    t_hi, t_lo = seq_lens[-1], (seq_lens[-2] if len(seq_lens) > 1 else seq_lens[-1])
    head = (f"{'op':17s} {'mode':8s} {'T':>5s} {'reference':>14s} {'torch':>10s} {'speed-up':>10s} "
            f"{'(CPU time)':>10s}")
    lines = ["", head, "-" * len(head)]
    ops_modes = sorted({(r["op"], r["mode"]) for r in rows}, key=lambda x: (OPS.index(x[0]), MODES.index(x[1])))
    for op, mode in ops_modes:
        ran = [T for T in seq_lens if (op, mode, "reference", T) in t]
        for T in seq_lens:
            key_t, key_r = (op, mode, "torch", T), (op, mode, "reference", T)
            tt, tr, ct, cr = t.get(key_t), t.get(key_r), c.get(key_t), c.get(key_r)
            note = ""
            if tr is None and ran:
                tr, cr, note = extrapolate(t, c, (op, mode), ran, T), extrapolate(c, c, (op, mode), ran, T), "~"
            ref_s = f"{note}{tr * 1e3:.1f} ms" if tr is not None else "not run"
            speed = f"{note}{tr / tt:.1f}x" if tr is not None and tt else "-"
            speed_cpu = f"{note}{cr / ct:.1f}x" if cr is not None and ct else "-"
            tt_s = f"{tt * 1e3:.1f} ms" if tt is not None else "-"
            lines.append(f"{op:17s} {mode:8s} {T:5d} {ref_s:>14s} {tt_s:>10s} {speed:>10s} {speed_cpu:>10s}")
        if (op, mode, "torch", t_hi) in t and (op, mode, "torch", t_lo) in t and t_hi != t_lo:
            s = t[(op, mode, "torch", t_hi)] / t[(op, mode, "torch", t_lo)]
            sc = c.get((op, mode, "torch", t_hi)), c.get((op, mode, "torch", t_lo))
            cpu_s = f", CPU time {sc[0] / sc[1]:.2f}" if sc[0] is not None and sc[1] else ""
            lines.append(f"{'':17s} {'':8s} torch T-scaling time({t_hi})/time({t_lo}) = {s:.2f}{cpu_s} "
                         f"(linear: {t_hi / t_lo:.0f})")
    if any(T > ref_max_t for T in seq_lens):
        lines.append(f"'~': reference fwd+bwd at T > {ref_max_t} not run; estimated by a power law through the "
                     f"two largest T that were run (linearly from one), an estimate, not a measurement.")
    return lines
