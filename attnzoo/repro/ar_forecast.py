"""ar-forecast: linear self-attention cannot beat OLS at forecasting AR(p) in context.

Zhou, Wang, Goel, Zhang (2025), "Why Do Transformers Fail to Forecast Time Series In-Context?",
arXiv:2510.09776 (MECHANISMS.md entry 19). Claims: LSA never beats linear regression in expected
MSE; the gap is Δ_n = B_p/n + o(1/n) > 0; under chain-of-thought rollout the predictions collapse to
the mean exponentially.

Setup: per seed one stationary AR(7) series from `attnzoo.tasks.ar_forecast` (φ_i ~ U(-0.9, 0.9),
σ = 0.05), split 0.8 / 0.1 / 0.1 in time (the middle tenth unused: fixed steps, no early stop),
standardised by the train split's std (LSA's output is cubic in the inputs; raw values ~0.1 would
only rescale its parameters). Hankel windows of n history columns (n = p+2 = 9, the paper's default,
and longer). Models (`attnzoo.models.in_context.InContextAttention`, one layer, one head, the query
column out of the keys; the paper's softmax keeps it in the normaliser): LSA (attention="linear",
the paper's H += (1/n) P H M HᵀQH) and softmax attention; Adam lr 1e-3, batch 512, init N(0, 0.01²)
(the paper's), MSE. Baselines: OLS AR(p) fitted once on the train split ("linear regression"), and
the in-context OLS on each window's n columns (`ols_ar_predict`). Teacher-forced MSE on every test
window; CoT: 100-step rollouts from test starts, each prediction fed back as the newest value.

Verdict rules (fixed before any run):
1. LSA never beats OLS: reproduced if at every n and seed MSE(LSA) >= MSE(OLS) - 2 SE (SE of the
   paired per-window difference); else not.
2. the gap shrinks as 1/n: slope b of log(gap) on log(n) over the n grid (mean over seeds; gaps must
   be > 0): reproduced if -1.5 <= b <= -0.5, partly if b < 0 otherwise, not if b >= 0 or a gap <= 0.
   B_p is reported as the fitted mean of gap·n (the paper's closed form for B_p was not retrieved).
3. softmax attention does not beat OLS either: the rule of claim 1 for the softmax model.
4. CoT collapses to the mean: with r_k = RMS over starts of the LSA rollout at step k, relative to the
   series' RMS: reproduced if r_100 < 0.1 and log r_k is linear in k (least-squares R² >= 0.7 over
   k = 1..100, slope < 0); partly if r_100 < 0.5; else not. The OLS rollout is reported beside it:
   a noise-free stable AR recursion decays to the mean too. A rollout that diverges (non-finite or
   |x| > 1e3; LSA is cubic in its inputs) stays in r_k, so it fails the rule; the count of diverged
   rollouts and the RMS of the others are reported beside it (reporting added after the medium run
   diverged; the rule is unchanged).
Untestable (issue #14, added before any run under it; it can only turn a verdict into "untestable"):
claims 1, 2 and 4 when LSA did not learn (at some n its MSE >= 0.9 x the zero predictor's, i.e. of
predicting the mean): an untrained LSA "never beats OLS" and "collapses to the mean" vacuously; claim 3
the same for the softmax model. Every model trains the same fixed steps (no wall-clock cap).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from attnzoo.models.in_context import InContextAttention
from attnzoo.repro._train import cpu_threads, device_note, fit_mse
from attnzoo.repro.base import Claim, verdict
from attnzoo.tasks.ar_forecast import hankel_samples, ols_ar_predict, sample_stationary_coefficients, simulate_ar

NAME = "ar-forecast"
PAPER = "Why Do Transformers Fail to Forecast Time Series In-Context? (Zhou et al. 2025), arXiv:2510.09776"
CLAIMS = (
    "LSA never beats OLS AR(p) in MSE",
    "the LSA-OLS gap shrinks as B_p/n",
    "softmax attention does not beat OLS either",
    "chain-of-thought rollouts collapse to the mean exponentially",
)
ORDER, NOISE, ROLLOUT = 7, 0.05, 100
SIZES = {
    "quick": {"length": 4000, "histories": (9, 18, 36), "steps": 300, "seeds": 1, "starts": 200},
    "medium": {"length": 20000, "histories": (9, 18, 36, 72), "steps": 2000, "seeds": 2, "starts": 500},
    "full": {"length": 50000, "histories": (9, 18, 36, 72, 144), "steps": 4000, "seeds": 2, "starts": 1000},
}


def windows_to_tokens(values: torch.Tensor, order: int) -> torch.Tensor:
    """values [S, n+p] (the known history) -> tokens [S, n+1, p+1]: n Hankel columns (x_{s-p..s}) and the
    query column (x_{t-p+1..t}, 0), as rows."""
    S, m = values.shape
    n = m - order
    padded = torch.cat([values, values.new_zeros(S, 1)], 1)
    idx = torch.arange(n + 1)[:, None] + torch.arange(order + 1)[None, :]   # [n+1, p+1]
    return padded[:, idx]


def global_ols(train: np.ndarray, order: int) -> np.ndarray:
    """φ̂ [p] (φ̂_1 multiplies the newest lag) by least squares on every lag window of the train split."""
    lags = np.lib.stride_tricks.sliding_window_view(train[:-1], order)[:, ::-1]   # newest first
    return np.linalg.lstsq(lags, train[order:], rcond=None)[0]


@torch.no_grad()
def rollout(predict, values: torch.Tensor, steps: int) -> torch.Tensor:
    """Feed each prediction back as the newest value: values [S, m] -> predictions [S, steps]."""
    out = []
    for _ in range(steps):
        y = predict(values)
        out.append(y)
        values = torch.cat([values[:, 1:], y[:, None]], 1)
    return torch.stack(out, 1)


def run(ctx) -> list[Claim]:
    with cpu_threads(ctx.device):
        return _run(ctx)


def _run(ctx) -> list[Claim]:
    cfg = SIZES[ctx.size]
    p, dev, hist = ORDER, ctx.device, cfg["histories"]
    rows = {}        # (seed, n) -> dict of MSEs
    rolls = []       # per seed: (lsa rms curve, ols rms curve, lsa rollout mse, ols rollout mse)
    for s in range(cfg["seeds"]):
        seed = ctx.seed * 100 + s
        rng = np.random.default_rng(seed)
        phi = sample_stationary_coefficients(p, rng)
        x = simulate_ar(phi, cfg["length"], noise_std=NOISE, rng=rng)
        a, b = int(0.8 * len(x)), int(0.9 * len(x))
        x = x / x[:a].std()
        train, test = x[:a], x[b:]
        phi_hat = global_ols(train, p)
        kept = {}
        for n in hist:
            Htr, ytr = hankel_samples(train, order=p, history=n)
            Hte, yte = hankel_samples(test, order=p, history=n)
            ztr, zte = Htr.transpose(1, 2).float(), Hte.transpose(1, 2).float()
            ytr, yte = ytr.float(), yte.double()
            lags = Hte[:, :-1, -1].flip(1)                         # query lags, newest first
            err = {"ols": (lags @ torch.from_numpy(phi_hat) - yte) ** 2, "zero": yte ** 2,
                   "ols_in_context": (ols_ar_predict(Hte).double() - yte) ** 2}
            models = {}
            for kind in ("linear", "softmax"):
                torch.manual_seed(seed)
                m = InContextAttention(p + 1, n_heads=1, attention=kind, init_std=0.01)
                g = torch.Generator().manual_seed(seed)
                fit_mse(m, lambda _s: (lambda i: (ztr[i], ytr[i]))(torch.randint(0, len(ztr), (512,), generator=g)),
                        steps=cfg["steps"], lr=1e-3, device=dev)
                m.cpu()
                with torch.no_grad():
                    err["lsa" if kind == "linear" else "softmax"] = (m(zte).double() - yte) ** 2
                models[kind] = m
            kept[n] = models["linear"]
            r = {k: float(v.mean()) for k, v in err.items()}
            for k in ("lsa", "softmax"):
                r[f"{k}_minus_ols_se"] = float((err[k] - err["ols"]).std() / math.sqrt(len(yte)))
            rows[(s, n)] = r
            ctx.record(seed=seed, history=n, order=p, **r)
            ctx.log(f"seed {seed} n={n}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if "_se" not in k))
        # CoT rollouts at the paper's default history n = p+2
        n = hist[0]
        lsa = kept[n]
        starts = np.linspace(n + p, len(test) - ROLLOUT - 1, cfg["starts"]).astype(int)
        hist_vals = torch.from_numpy(np.stack([test[t - n - p:t] for t in starts])).float()
        truth = np.stack([test[t:t + ROLLOUT] for t in starts])
        lsa_path = rollout(lambda v: lsa(windows_to_tokens(v, p)), hist_vals, ROLLOUT).double().numpy()
        phi_t = torch.from_numpy(phi_hat).float()
        ols_path = rollout(lambda v: v[:, -p:].flip(1) @ phi_t, hist_vals, ROLLOUT).double().numpy()
        scale = float(np.sqrt((test ** 2).mean()))
        bad = ~np.isfinite(lsa_path).all(1) | (np.abs(np.nan_to_num(lsa_path, nan=np.inf)).max(1) > 1e3)
        ok = lsa_path[~bad] if (~bad).any() else np.full((1, ROLLOUT), np.nan)
        rolls.append({"diverged": int(bad.sum()), "lsa_rms_kept": np.sqrt((ok ** 2).mean(0)) / scale,
                      "lsa_rms": np.sqrt((lsa_path ** 2).mean(0)) / scale,
                      "ols_rms": np.sqrt((ols_path ** 2).mean(0)) / scale,
                      "lsa_mse": ((lsa_path - truth) ** 2).mean(0), "ols_mse": ((ols_path - truth) ** 2).mean(0)})
        for k in range(ROLLOUT):
            ctx.record(seed=seed, history=n, rollout_step=k + 1, diverged=rolls[-1]["diverged"],
                       **{key: float(v[k]) for key, v in rolls[-1].items() if key != "diverged"})
    return _claims(ctx, cfg, rows, rolls)


def _claims(ctx, cfg, rows, rolls) -> list[Claim]:
    hist, seeds = cfg["histories"], range(cfg["seeds"])
    cond = (f"AR({ORDER}), σ={NOISE}, series {cfg['length']} (standardised), n={list(hist)}, {cfg['steps']} Adam "
            f"steps x 512, {cfg['seeds']} seed(s), {device_note(ctx.device)}")

    def never_beats(k):
        return all(r[k] >= r["ols"] - 2 * r[f"{k}_minus_ols_se"] for r in rows.values())

    def unlearned(k, label):
        bad = [f"n={n}" for (_s, n), r in rows.items() if "zero" in r and r[k] >= 0.9 * r["zero"]]
        return f"; untestable: {label} did not learn (MSE >= 0.9 x predicting the mean at {', '.join(bad)})" \
            if bad else ""

    skip_lsa, skip_sm = unlearned("lsa", "LSA"), unlearned("softmax", "softmax")

    gap = {n: float(np.mean([rows[(s, n)]["lsa"] - rows[(s, n)]["ols"] for s in seeds])) for n in hist}
    positive = all(g > 0 for g in gap.values())
    slope = float(np.polyfit(np.log(hist), np.log([max(g, 1e-12) for g in gap.values()]), 1)[0]) if positive \
        else float("nan")
    B = float(np.mean([g * n for n, g in gap.items()]))
    lsa_rms = np.mean([r["lsa_rms"] for r in rolls], 0)
    ols_rms = np.mean([r["ols_rms"] for r in rolls], 0)
    kept = np.nanmean([r["lsa_rms_kept"] for r in rolls], 0)
    diverged = sum(r["diverged"] for r in rolls)
    k = np.arange(1, ROLLOUT + 1)
    ly = np.log(np.maximum(lsa_rms, 1e-12))
    if np.isfinite(ly).all():
        fit = np.polyfit(k, ly, 1)
        r2 = float(1 - ((ly - np.polyval(fit, k)) ** 2).sum() / ((ly - ly.mean()) ** 2).sum())
    else:                                    # a diverged rollout: no exponential fit
        fit, r2 = (float("nan"), float("nan")), float("nan")
    _plot(ctx, hist, rows, seeds, rolls)

    def table(key):
        return ", ".join(f"n={n}: {np.mean([rows[(s, n)][key] for s in seeds]):.4f}" for n in hist)

    return [
        Claim(CLAIMS[0], "MSE(LSA) >= MSE(OLS) at every n", f"LSA {table('lsa')}; OLS {table('ols')}; "
              f"in-context OLS {table('ols_in_context')}", verdict(never_beats("lsa"), untestable=skip_lsa),
              cond + skip_lsa),
        Claim(CLAIMS[1], "Δ_n = B_p/n + o(1/n) > 0 (slope -1 in log-log)",
              f"gap {', '.join(f'n={n}: {g:.4f}' for n, g in gap.items())}; log-log slope "
              f"{slope:.2f}; mean gap·n {B:.3f}",
              verdict(positive and -1.5 <= slope <= -0.5, positive and slope < 0, skip_lsa), cond + skip_lsa),
        Claim(CLAIMS[2], "softmax no better than OLS", f"softmax {table('softmax')}",
              verdict(never_beats("softmax"), untestable=skip_sm),
              cond + "; softmax: the query out of the normaliser" + skip_sm),
        Claim(CLAIMS[3], "predictions decay to the mean exponentially",
              f"LSA rollout RMS/series RMS: step 1 {lsa_rms[0]:.2f}, 10 {lsa_rms[9]:.2f}, 100 {lsa_rms[-1]:.3f}; "
              f"log-linear R² {r2:.2f}, rate {fit[0]:.3f}/step; OLS rollout step 100 {ols_rms[-1]:.3f}; "
              f"{diverged} of {len(rolls) * cfg['starts']} LSA rollouts diverged (non-finite or > 1e3)"
              + (f", the others at step 100: {kept[-1]:.1e}" if diverged else ""),
              verdict(lsa_rms[-1] < 0.1 and r2 >= 0.7 and fit[0] < 0, lsa_rms[-1] < 0.5, skip_lsa),
              cond + f"; rollouts at n={hist[0]} from {cfg['starts']} test starts" + skip_lsa),
    ]


def _plot(ctx, hist, rows, seeds, rolls):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("lsa", "LSA"), ("softmax", "softmax"), ("ols", "OLS AR(p), train split"),
                       ("ols_in_context", "OLS on the window")):
        a1.plot(hist, [np.mean([rows[(s, n)][key] for s in seeds]) for n in hist], marker="o", label=label)
    a1.set(xscale="log", yscale="log", xlabel="history n (columns)", ylabel="teacher-forced test MSE (standardised)",
           title=f"AR({ORDER}) one-step forecasts")
    a1.legend(fontsize=7)
    k = np.arange(1, ROLLOUT + 1)
    a2.plot(k, np.mean([r["lsa_rms"] for r in rolls], 0), label="LSA rollout RMS")
    if any(r["diverged"] for r in rolls):
        a2.plot(k, np.nanmean([r["lsa_rms_kept"] for r in rolls], 0), "--", label="LSA, non-diverged rollouts")
    a2.plot(k, np.mean([r["ols_rms"] for r in rolls], 0), label="OLS rollout RMS")
    a2.axhline(1.0, color="grey", lw=0.8, ls=":", label="series RMS")
    a2.set(yscale="log", xlabel="rollout step", ylabel="RMS / series RMS", title="chain-of-thought rollouts",
           ylim=(1e-4, 1e2))
    a2.legend(fontsize=7)
    ctx.savefig(fig)
