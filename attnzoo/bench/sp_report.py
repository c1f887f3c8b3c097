"""The report of `attnzoo bench sp`: sp.md (tables, the fitted alpha-beta model, its check against the
measurements, its prediction for 8-256 GPUs) and sp.png, from the rows of one run in sp.jsonl."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from attnzoo.parallel.comm_model import INFINIBAND, NVLINK, fit_alpha_beta, predict, scan_seconds, scan_terms

GPU_WORLDS = (8, 16, 32, 64, 128, 256)
GPU_LAYER = {"H": 16, "D": 128}  # a 1B GLA layer (ZeCO's setting): state 16 x 128 x 128 fp32 per sequence


def load_run(out, run_id=None) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in (Path(out) / "sp.jsonl").read_text().splitlines() if line.strip()]
    if run_id is None:
        run_id = [r for r in rows if r["kind"] == "machine"][-1]["run_id"]
    machine = next(r for r in rows if r["kind"] == "machine" and r["run_id"] == run_id)
    return machine, [r for r in rows if r.get("run_id") == run_id and r["kind"] != "machine"]


def _family(scheme):
    return "allgather" if scheme == "allgather" else "p2p"


def fit_model(comm_rows) -> dict:
    """{"p2p": (alpha, beta)} fitted to the ring and All-Scan scans (one model for both: they differ only
    in pieces), {"allgather": (alpha, beta)} to the all-gathers (a collective has its own costs)."""
    fits = {}
    for fam in ("p2p", "allgather"):
        rows = [r for r in comm_rows if _family(r["scheme"]) == fam]
        if len(rows) >= 2:
            terms = [(*scan_terms(r["scheme"], r["P"], r["state_bytes"], pieces=r["pieces"],
                                  map_bytes=r.get("map_bytes", 0)), r["seconds"]) for r in rows]
            fits[fam] = fit_alpha_beta(terms)
    return fits


def model_seconds(r, fits):
    alpha, beta = fits[_family(r["scheme"])]
    return scan_seconds(r["scheme"], r["P"], r["state_bytes"], alpha=alpha, beta=beta, pieces=r["pieces"],
                        map_bytes=r.get("map_bytes", 0))


def label(r):
    if r["scheme"] == "local":
        return "local op only (no communication)"
    return r["scheme"] + (", thread overlap" if r.get("overlap") is True else "")


def _fmt_bytes(n):
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def _op_tables(op_rows):
    lines = []
    groups = defaultdict(dict)
    for r in op_rows:
        groups[(r["op"], r["shape"])][(label(r), r["P"])] = r
    labels = list(dict.fromkeys(label(r) for r in op_rows))
    worlds = sorted({r["P"] for r in op_rows})
    for (op, shape), cells in groups.items():
        any_r = next(iter(cells.values()))
        lines += [f"**{op}**, `{shape}`: {any_r['tokens_per_rank']} tokens per rank, H = {any_r['H']}, "
                  f"D = {any_r['D']}, state {_fmt_bytes(any_r['state_bytes'])} per rank, fwd+bwd ms "
                  f"(bytes sent by the busiest rank)", "",
                  "| scheme | " + " | ".join(f"P = {p}" for p in worlds) + " |",
                  "|---|" + "---|" * len(worlds)]
        for s in labels:
            cellstr = []
            for p in worlds:
                r = cells.get((s, p))
                cellstr.append("-" if r is None else f"{1e3 * r['seconds']:.1f} ({_fmt_bytes(r['bytes_sent_max'])})")
            lines.append(f"| {s} | " + " | ".join(cellstr) + " |")
        lines.append("")
    return lines


def _comm_check(comm_rows, fits):
    lines = ["| scheme | pieces | P | state | measured ms | model ms | model / measured |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(comm_rows, key=lambda r: (r["scheme"], r["pieces"], r["state_bytes"], r["P"])):
        m = model_seconds(r, fits)
        lines.append(f"| {r['scheme']} | {r['pieces']} | {r['P']} | {_fmt_bytes(r['state_bytes'])} | "
                     f"{1e3 * r['seconds']:.3f} | {1e3 * m:.3f} | {m / r['seconds']:.2f} |")
    return lines


def best_pieces(P, state_bytes, link=NVLINK, choices=(1, 2, 4, 8, 16, 32, 64)) -> int:
    """The piece count that minimises the modelled All-Scan time (about sqrt(P M beta / alpha))."""
    return min(choices, key=lambda n: predict("allscan", P, state_bytes, pieces=n)["seconds"])


def _gpu_prediction():
    H, D = GPU_LAYER["H"], GPU_LAYER["D"]
    M, diag, dense = H * D * D * 4, H * D * 4, H * D * D * 4
    lines = [f"State of one layer: H = {H}, d_k = d_v = {D}, fp32, B = 1: {_fmt_bytes(M)}. Links (assumed, not "
             f"measured): {NVLINK.name}, alpha {NVLINK.alpha * 1e6:.0f} us, {NVLINK.bandwidth / 1e9:.0f} GB/s, up to "
             f"8 GPUs; {INFINIBAND.name}, alpha {INFINIBAND.alpha * 1e6:.0f} us, {INFINIBAND.bandwidth / 1e9:.0f} "
             "GB/s, beyond (the slowest hop sets a chain's pace; the all-gather is NCCL's ring). All-Scan with the "
             "piece count n that minimises its time. Per layer, forward + backward scans:", "",
             "| P | n | allscan ms | ring ms | allgather ms (GLA) | allgather ms (delta rule) | bytes/rank allscan "
             "| bytes/rank allgather (GLA) |", "|---|---|---|---|---|---|---|---|"]
    for P in GPU_WORLDS:
        n = best_pieces(P, M)
        a = predict("allscan", P, M, pieces=n)
        r = predict("ring", P, M)
        g = predict("allgather", P, M, map_bytes=diag)
        d = predict("allgather", P, M, map_bytes=dense)
        lines.append(f"| {P} | {n} | {1e3 * a['seconds']:.2f} | {1e3 * r['seconds']:.2f} | {1e3 * g['seconds']:.2f} "
                     f"| {1e3 * d['seconds']:.2f} | {_fmt_bytes(a['bytes_per_rank'])} | "
                     f"{_fmt_bytes(g['bytes_per_rank'])} |")
    return lines


def write_plot(path, op_rows, comm_rows, fits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    worlds = sorted({r["P"] for r in op_rows} | {r["P"] for r in comm_rows})
    colors = {"local op only (no communication)": "k", "allscan": "C0", "allscan, thread overlap": "C9",
              "ring": "C2", "allgather": "C3", "allgather, thread overlap": "C1"}
    cases = sorted({(r["op"], r["shape"]) for r in op_rows})
    styles = dict(zip(cases, [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D")] * 4))
    for case in cases:
        ls, mk = styles[case]
        for lab, c in colors.items():
            pts = sorted((r["P"], r["seconds"], r["bytes_sent_max"]) for r in op_rows
                         if (r["op"], r["shape"]) == case and label(r) == lab)
            if not pts:
                continue
            axes[0].plot([p for p, _, _ in pts], [1e3 * t for _, t, _ in pts], linestyle=ls, marker=mk, color=c)
            if "thread" not in lab and "local" not in lab:
                axes[1].plot([p for p, _, _ in pts], [b / 2**20 for _, _, b in pts], linestyle=ls, marker=mk, color=c)
    scheme_handles = [Line2D([], [], color=c, label=lab) for lab, c in colors.items()
                      if any(label(r) == lab for r in op_rows)]
    case_handles = [Line2D([], [], color="grey", linestyle=styles[c][0], marker=styles[c][1], label=f"{c[0]}/{c[1]}")
                    for c in cases]
    axes[0].legend(handles=scheme_handles + case_handles, fontsize=7)
    axes[0].set(xlabel="ranks P", ylabel="fwd+bwd ms (weak scaling)", yscale="log",
                title="sequence-parallel op, gloo, 1 thread per rank")
    axes[1].legend(handles=[h for h in scheme_handles if "thread" not in h.get_label() and "local" not in
                            h.get_label()] + case_handles, fontsize=7)
    axes[1].set(xlabel="ranks P", ylabel="MiB sent by the busiest rank per fwd+bwd", title="bytes per rank")
    big = max((r["state_bytes"] for r in comm_rows), default=0)
    for (s, n), c in zip(sorted({(r["scheme"], r["pieces"]) for r in comm_rows}), ("C3", "C0", "C4", "C2", "C5")):
        for M in sorted({r["state_bytes"] for r in comm_rows}):
            rs = sorted((r for r in comm_rows if (r["scheme"], r["pieces"]) == (s, n) and r["state_bytes"] == M),
                        key=lambda r: r["P"])
            if rs and _family(s) in fits:
                axes[2].plot([r["P"] for r in rs], [1e3 * r["seconds"] for r in rs], "o", color=c)
                axes[2].plot([r["P"] for r in rs], [1e3 * model_seconds(r, fits) for r in rs], "-", color=c,
                             label=f"{s} n={n}" if M == big else None)
    axes[2].set(xlabel="ranks P", ylabel="ms per forward scan", yscale="log",
                title="one scan (16 KiB .. 4 MiB): measured (dots), model (lines)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xticks(worlds)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fit_lines(fits, comm_rows, cores):
    out = []
    for fam, what in (("p2p", "ring and All-Scan (one fit: they differ only in pieces)"),
                      ("allgather", "all-gather")):
        if fam in fits:
            a, b = fits[fam]
            rows = [r for r in comm_rows if _family(r["scheme"]) == fam]
            ratio = {r["P"] <= cores: [] for r in rows}
            for r in rows:
                ratio[r["P"] <= cores].append(model_seconds(r, fits) / r["seconds"])
            spans = "; ".join(f"{lab}: {min(v):.2f} .. {max(v):.2f} ({len(v)} rows)" for lab, v in (
                (f"P <= {cores} (a core per rank)", ratio.get(True)), (f"P > {cores}", ratio.get(False))) if v)
            out.append(f"- {what}: alpha = {a * 1e6:.1f} us per message, beta = {b * 1e9:.3f} ns per byte "
                       f"({1 / b / 1e9 if b > 0 else float('nan'):.2f} GB/s including the combine); model / measured "
                       f"{spans}")
    return out


def write_report(out, *, run_id=None, echo=print) -> str:
    out = Path(out)
    machine, rows = load_run(out, run_id)
    op_rows = [r for r in rows if r["kind"] == "op"]
    comm_rows = [r for r in rows if r["kind"] == "comm"]
    fits = fit_model(comm_rows)
    lines = [
        "# Sequence parallelism: All-Scan vs ring vs all-gather (`attnzoo bench sp`)", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, backend "
        f"{machine['backend']} on {machine['device']}, {machine['threads_per_rank']} thread per rank, load average "
        f"{machine['loadavg_1m_at_start']} at start (a shared machine); run {machine['run_id']}, {machine['time']}, "
        f"commit {machine.get('git') or 'not recorded'}. Ranks beyond the core count share cores, so compute "
        "time grows with P here: these are gloo measurements of the algorithms, not of GPU scaling.", "",
        "## Time per fwd+bwd and bytes per rank (weak scaling: fixed tokens per rank)", "",
        "Median of interleaved rounds (variants in a rotated order each round). Load average while measuring: "
        + ", ".join(f"P = {P}: {max(r.get('loadavg_1m', float('nan')) for r in op_rows if r['P'] == P):.1f}"
                    for P in sorted({r["P"] for r in op_rows})) + ".", "", *_op_tables(op_rows),
        "## Communication model, fitted to the gloo scans", "",
        "One scan of a state of M bytes over P ranks (`attnzoo/parallel/comm_model.py`): All-Scan with n pieces "
        "(P + n - 2)(alpha + (M / n) beta), ring (P - 1)(alpha + M beta), ring all-gather of the maps and states "
        "(P - 1)(alpha + m beta). Least squares, relative errors weighted equally:", "",
        *_fit_lines(fits, comm_rows, machine["cores"]), "", *_comm_check(comm_rows, fits), "",
        "## Model prediction for 8-256 GPUs (a model, not a measurement)", "", *_gpu_prediction(), "",
    ]
    md = "\n".join(lines)
    (out / "sp.md").write_text(md)
    if op_rows or comm_rows:
        write_plot(out / "sp.png", op_rows, comm_rows, fits)
    echo(f"wrote {out / 'sp.md'} and {out / 'sp.png'}")
    return md
