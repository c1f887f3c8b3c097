"""References of log-linear attention (Guo et al. 2025, arXiv:2506.04761), float64-capable loops.

- `log_linear_reference`: the recurrent definition, one token at a time per sequence: every level's
  state takes the token's transition A_t (Mamba-2: exp(g_t) I; gated DeltaNet: exp(g_t)(I - beta_t
  k_t k_tᵀ)), the token enters level 0 as b_t v_tᵀ (b = k, or beta k), the output reads every level
  with its weight, o_t = scale sum_l lambda_t^(l) q_tᵀ S_t^(l), then the Fenwick carry merges
  levels 0 .. p into p + 1 (fenwick.py). The sum of the levels is the plain state of the base model.
- `log_linear_masked`: the paper's parallel form O = (A ⊙ M^S ⊙ M^H) V, with the hierarchical mask
  M^H[t, s] = lambda_t^(level(t, s)) and A ⊙ M^S the base model's materialised attention matrix
  (Mamba-2: q_tᵀ k_s prod_{r=s+1..t} exp(g_r); gated DeltaNet: q_tᵀ A_t ... A_{s+1} beta_s k_s).
  No initial state.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.loglinear.fenwick import LevelState, real_positions


def _transition(S, a, k, beta):
    """A_t S for the states S [H, K, V] of every head: a S (Mamba-2) or a (S - beta k (kᵀ S)) (gated DeltaNet)."""
    if beta is not None:
        S = S - beta[:, None, None] * k[:, :, None] * torch.einsum("hk,hkv->hv", k, S)[:, None, :]
    return a[:, None, None] * S


def log_linear_reference(q, k, v, g, level_weights, beta=None, *, mask=None, scale=None, initial_state=None,
                         output_final_state=False):
    """The recurrent definition, token by token (arguments as `log_linear_attention`)."""
    B, T, H, K = q.shape
    V, L = v.shape[-1], level_weights.shape[-1]
    ct = compute_dtype(q, k, v, g, level_weights, None if initial_state is None else initial_state.S)
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, lam = (t.to(ct) for t in (q, k, v, g, level_weights))
    beta = None if beta is None else beta.to(ct)
    o = torch.zeros(B, T, H, V, dtype=ct, device=q.device)
    finals, counts = [], []
    for b in range(B):
        n = 0 if initial_state is None else int(initial_state.count[b])
        levels = {} if initial_state is None else {
            i + 1: initial_state.S[b, :, i].to(ct) for i in range(initial_state.S.shape[2])}
        for t in range(T):
            if mask is not None and not bool(mask[b, t]):
                continue
            bt = None if beta is None else beta[b, t]
            for lv in levels:
                levels[lv] = _transition(levels[lv], g[b, t].exp(), k[b, t], bt)
            key = k[b, t] if beta is None else beta[b, t][:, None] * k[b, t]
            levels[0] = key[:, :, None] * v[b, t][:, None, :]                         # [H, K, V]
            for lv, S in levels.items():
                read = torch.einsum("hk,hkv->hv", q[b, t], S)
                o[b, t] += scale * lam[b, t, :, min(lv, L - 1), None] * read
            p = ((n + 1) & -(n + 1)).bit_length() - 1                                 # trailing ones of n
            top = min(p + 1, L - 1)
            merged = [lv for lv in levels if lv <= p or lv == top]
            levels[top] = sum(levels.pop(lv) for lv in merged)
            n += 1
        kept = min(L - 1, n.bit_length())
        zero = torch.zeros(H, K, V, dtype=ct, device=q.device)
        finals.append([levels.get(i + 1, zero) for i in range(kept)])
        counts.append(n)
    o = o.to(q.dtype)
    if not output_final_state:
        return o, None
    width = max(len(f) for f in finals)
    S = torch.zeros(B, H, width, K, V, dtype=ct, device=q.device)
    for b, f in enumerate(finals):
        if f:
            S[b, :, : len(f)] = torch.stack(f, 1)
    return o, LevelState(S, torch.tensor(counts, dtype=torch.long, device=q.device))


def fenwick_levels(pos: torch.Tensor, n_levels: int) -> torch.Tensor:
    """[B, T, T] level(t, s) = min(bit_length(pos_t XOR pos_s), n_levels - 1) from integer positions [B, T]."""
    x = pos[:, :, None] ^ pos[:, None, :]
    lv = torch.zeros_like(x)
    for j in range(n_levels - 1):
        lv = lv + (x >= (1 << j)).long()
    return lv


def log_linear_masked(q, k, v, g, level_weights, beta=None, *, mask=None, scale=None):
    """O = (A ⊙ M^S ⊙ M^H) V, materialised [B, H, T, T] (arguments as `log_linear_attention`, no state)."""
    B, T, H, K = q.shape
    L = level_weights.shape[-1]
    ct = compute_dtype(q, k, v, g, level_weights)
    scale = K ** -0.5 if scale is None else scale
    real = torch.ones(B, T, dtype=torch.bool, device=q.device) if mask is None else mask
    z = real[..., None, None]
    q, k, v = (torch.where(z, t.to(ct), 0) for t in (q, k, v))
    g = torch.where(real[..., None], g.to(ct), 0)
    pos = real_positions(mask, torch.zeros(B, dtype=torch.long, device=q.device), B, T, q.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if beta is None:
        G = g.cumsum(1).transpose(1, 2)                                              # [B, H, T]
        decay = torch.exp(torch.where(causal, G[..., :, None] - G[..., None, :], float("-inf")))
        A = torch.einsum("bthk,bshk->bhts", q, k) * decay
    else:                                    # column s: the key beta_s k_s carried through A_{s+1}, ..., A_t
        beta = torch.where(real[..., None], beta.to(ct), 0)
        A = torch.zeros(B, H, T, T, dtype=ct, device=q.device)
        for s in range(T):
            w = beta[:, s, :, None] * k[:, s]                                        # [B, H, K]
            for t in range(s, T):
                if t > s:
                    bt, kt = beta[:, t, :, None], k[:, t]
                    w = g[:, t, :, None].exp() * (w - bt * kt * (kt * w).sum(-1, keepdim=True))
                A[:, :, t, s] = (q[:, t] * w).sum(-1)
    lv = fenwick_levels(pos, L)                                                      # [B, T, T]
    lam = level_weights.to(ct).permute(0, 2, 1, 3)                                   # [B, H, T, L]
    MH = torch.gather(lam, -1, lv[:, None].expand(B, H, T, T))
    P = torch.where(causal & real[:, None, None, :], A * MH, 0)
    o = scale * torch.einsum("bhts,bshv->bthv", P, v)
    return torch.where(real[..., None, None], o, 0).to(q.dtype)
