"""The zoo's report: best learning rate per (mixer, d_model, T, pairs), a Markdown leaderboard,
and a plot of accuracy against state size (log x) and against d_model, one line per mixer."""

from __future__ import annotations

import os
from collections import defaultdict

from attnzoo.bench.table import human_bytes
from attnzoo.bench.zoo.results import record_init


def best_runs(records: list[dict]) -> list[dict]:
    """Keep, per (task, mixer, d_model, seq_len, num_pairs), the run with the best accuracy (Zoology)."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r.get("accuracy") is None:
            continue
        k = (r["task"], r["mixer"], r["d_model"], r["seq_len"], r["num_pairs"])
        if k not in best or r["accuracy"] > best[k]["accuracy"]:
            best[k] = r
    return list(best.values())


def _sweep_steps(r: dict):
    return r.get("sweep_steps", r.get("max_steps"))


def _capped(r: dict) -> bool:
    """A run given fewer steps than its sweep's by the time cap (schedule.capped_steps)."""
    return bool(r.get("max_steps")) and r["max_steps"] < (_sweep_steps(r) or 0)


def budget_sentence(rows: list[dict]) -> list[str]:
    """The leaderboard's statement of the budget rule the runs were trained under."""
    budgets = sorted({(_sweep_steps(r), r.get("target_accuracy")) for r in rows if r.get("max_steps")})
    if not budgets:
        return []
    steps = ", ".join(str(n) for n, _ in budgets)
    targets = ", ".join(sorted({f"{t:g}" for _, t in budgets if t is not None})) or "none"
    ratios = sorted({r["time_cap_ratio"] for r in rows if r.get("time_cap_ratio")})
    if not ratios:
        rule = ("Budget: equal steps. Every run trains up to {steps} steps (the cosine schedule spans them) and stops "
                "early once held-out accuracy reaches {targets}; slow mixers get as many steps as fast ones.")
    else:
        cap = ", ".join(f"{x:g}" for x in ratios)
        rule = ("Budget: equal steps up to a time cap. Every run trains up to {steps} steps (the cosine schedule "
                "spans them) and stops early once held-out accuracy reaches {targets}, except that a run whose "
                f"steps would take more than {cap}x the median run's time (from the step times probed at the "
                "start) trains the steps that time buys, its schedule spanning them: ‡ marks it, and its accuracy "
                "is a lower bound for the full steps (a slow mixer ranks lower for being slow).")
    spans = sorted({r["schedule_steps"] for r in rows if r.get("schedule_steps")})
    if spans:
        rule += (" The cosine schedule spans {} steps instead (steps only cap the training): a run that reached "
                 "the target is exactly the full schedule's run; one that stopped at the cap is a lower bound of "
                 "it.").format(", ".join(map(str, spans)))
    return [rule.format(steps=steps, targets=targets) + " † marks a run cut short by the sweep's wall-clock cap "
            "(a machine too slow for the budget): its accuracy is a lower bound.", ""]


def _settings(rows):
    return sorted({(r["task"], r["seq_len"], r["num_pairs"]) for r in rows})


def leaderboard_markdown(records: list[dict]) -> str:
    rows = best_runs(records)
    failed = sorted({(r["mixer"], r.get("error", "")) for r in records if r.get("accuracy") is None})
    machines = sorted({r.get("machine", "") for r in records})
    lines = ["# attnzoo zoo leaderboard", "",
             "Best learning rate per (mixer, d_model), as Zoology reports; accuracy on held-out sequences.", "",
             "Machine: " + "; ".join(machines), ""]
    inits = sorted({record_init(r) for r in records})
    if inits != ["default"]:
        lines += ["Initialisation: " + ", ".join(inits) + (" (GPT-2's, as Zoology)" if inits == ["gpt2"] else ""), ""]
    lines += budget_sentence(rows)
    for task, T, D in _settings(rows):
        sub = [r for r in rows if (r["task"], r["seq_len"], r["num_pairs"]) == (task, T, D)]
        d_models = sorted({r["d_model"] for r in sub})
        head = f"## {task}, T={T}" + (f", {D} pairs, vocab {sub[0]['vocab_size']}" if task == "mqar" else "")
        lines += [head, "", "| rank | mixer | " + " | ".join(f"acc d={d} (lr, steps)" for d in d_models)
                  + f" | state @T={T}, d={d_models[-1]} | wall s |", "|---|---|" + "---|" * (len(d_models) + 2)]
        by_mixer = defaultdict(dict)
        for r in sub:
            by_mixer[r["mixer"]][r["d_model"]] = r
        order = sorted(by_mixer, key=lambda m: (-max(x["accuracy"] for x in by_mixer[m].values()), m))
        for i, m in enumerate(order, 1):
            cells = []
            for d in d_models:
                r = by_mixer[m].get(d)
                cut = "" if r is None else ("‡" if _capped(r) else "") + (
                    "†" if r.get("stopped") == "time" and r.get("max_steps") else "")
                cells.append("—" if r is None else f"{r['accuracy']:.3f} ({r['lr']:.2g}, {r['steps']}{cut})")
            last_d = max(by_mixer[m])  # the state column's width, or the widest this mixer ran (then named)
            last = by_mixer[m][last_d]
            wall = f"{last['seconds']:.0f}" if "seconds" in last else "—"
            state = human_bytes(last["state_bytes"]) + ("" if last_d == d_models[-1] else f" (d={last_d})")
            lines.append(f"| {i} | `{m}` | " + " | ".join(cells) + f" | {state} | {wall} |")
        lines.append("")
    if failed:
        lines += ["## Runs that failed", ""] + [f"- `{m}`: {e}" for m, e in failed] + [""]
    return "\n".join(lines)


def plot_zoo(records: list[dict], path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = best_runs(records)
    settings = _settings(rows)
    if not settings:
        return None
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4.2 * len(settings)), squeeze=False)
    colors = plt.get_cmap("tab20")
    index = {m: i for i, m in enumerate(sorted({r["mixer"] for r in rows}))}   # one style per mixer in every panel
    for (task, T, D), (ax_s, ax_d) in zip(settings, axes):
        sub = [r for r in rows if (r["task"], r["seq_len"], r["num_pairs"]) == (task, T, D)]
        for m in sorted({r["mixer"] for r in sub}):
            i = index[m]
            pts = sorted((r for r in sub if r["mixer"] == m), key=lambda r: r["d_model"])
            style = {"marker": "osD^v<>"[i // 20 % 7], "color": colors(i % 20), "label": m}
            ax_s.plot([r["state_bytes"] for r in pts], [r["accuracy"] for r in pts], "-", **style)
            ax_d.plot([r["d_model"] for r in pts], [r["accuracy"] for r in pts], "-", **style)
        title = f"{task} T={T}" + (f" pairs={D}" if D else "")
        ax_s.set(xscale="log", xlabel="state per sequence (bytes, log)", ylabel="accuracy", title=title, ylim=(0, 1.02))
        ax_d.set(xscale="log", xlabel="d_model", ylabel="accuracy", title=title, ylim=(0, 1.02))
        widths = sorted({r["d_model"] for r in sub})
        ax_d.set_xticks(widths, [str(w) for w in widths])       # Zoology's Figure 2 axis: the widths run
        ax_d.minorticks_off()
        if len(widths) == 1:
            ax_d.set_xlim(widths[0] / 1.5, widths[0] * 1.5)
        ax_d.legend(fontsize=7, bbox_to_anchor=(1.02, 1.0), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: list[dict], out: str, *, quiet: bool = False) -> tuple[str, str | None]:
    md = leaderboard_markdown(records)
    md_path = os.path.join(out, "leaderboard.md")
    tmp = md_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(md + "\n")
    os.replace(tmp, md_path)
    png = plot_zoo(records, os.path.join(out, "zoo.png"))
    if not quiet:
        from rich.console import Console
        from rich.markdown import Markdown

        console = Console()
        console.print(Markdown(md))
        console.print(f"leaderboard: {md_path}\nplot: {png}")
    return md_path, png
