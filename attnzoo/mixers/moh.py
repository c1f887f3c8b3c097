"""MoH: Mixture-of-Head attention (Jin, Zhu, Yuan, Yan, 2024, arXiv:2410.11842).

Each token uses the h_s shared heads and its top-k of the h_r routed heads; head outputs are
weighted before the output projection instead of summed:

    y_t = W_o concat_i( g_{t,i} · head_i(x)_t )
    [α1, α2] = 2 · softmax(W_h x_t)                       (×2 as in the official code: gates average ~1)
    shared  i:  g_{t,i} = α1 · h_s · softmax(W_s x_t)_i
    routed  i:  p = softmax(W_r x_t),  g_{t,i} = α2 · k · p_i / Σ_{j∈topk} p_j  if i ∈ topk(p) else 0

x [B, T, d_model] -> y [B, T, d_model]; heads 0..h_s-1 are shared, the rest routed. In training
`aux_loss = 0.01 · L_b`, L_b = h_r · Σ_i P_i f_i (P_i mean routing probability of routed head i,
f_i share of the token→head assignments that go to i, so L_b = 1 when balanced), over real tokens.

Inference (eval, `skip_inactive_heads=True`) computes attention only for the (token, head) pairs
that are active: every token for the shared heads, and for each routed head only the tokens that
chose it (their queries are projected and attended alone). Training and `skip_inactive_heads=False`
compute every head and multiply by the gates (zero for inactive heads): the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.layers import apply_rope, rope_frequencies, token_positions
from attnzoo.mixers.softmax import KVCacheState, SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.softmax import softmax_attention
from attnzoo.registry import Card, Paper, register


def rope_cos_sin(pos, head_dim, theta, dtype):
    """cos, sin [n, 1, head_dim/2] for positions pos [n] (same angles as layers.apply_rope)."""
    ang = pos.to(torch.float64)[:, None] * rope_frequencies(head_dim, theta, pos.device)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.cos(ang).to(ct)[:, None, :], torch.sin(ang).to(ct)[:, None, :]


def rotate_half(x, cos, sin):
    """RoPE rotate-half on x [..., n, h, D] with cos/sin [..., n, 1, D/2]."""
    D = x.shape[-1]
    xf = x.to(cos.dtype)
    x1, x2 = xf[..., : D // 2], xf[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def routed_attention(q, k, v, q_pos, k_pos, valid, *, simple: bool, q_chunk: int = 64):
    """Causal attention of each head's own query subset: q [h, n, D] (sorted by position per head),
    k/v [h, L, D], q_pos [h, n], k_pos/valid [L]. Query chunks only read keys up to their last
    position when keys are in position order (`simple`), which keeps the causal saving."""
    _h, n, _ = q.shape
    zero, neg = q.new_zeros(()), q.new_full((), float("-inf"))
    out = []
    for c0 in range(0, n, q_chunk):
        qp = q_pos[:, c0 : c0 + q_chunk]
        L = int(qp.max()) + 1 if simple else k.shape[1]
        allowed = k_pos[None, None, :L] <= qp[:, :, None]
        if not simple:
            allowed = allowed & valid[None, None, :L]
        bias = torch.where(allowed, zero, neg)
        out.append(F.scaled_dot_product_attention(  # 4-D so CPU picks its flash kernel
            q[None, :, c0 : c0 + q_chunk], k[None, :, :L], v[None, :, :L], attn_mask=bias[None])[0])
    return torch.cat(out, 1)


class MoHAttention(SoftmaxAttention):
    state_class = KVCacheState

    def __init__(
        self, d_model: int, *, n_heads: int = 8, n_kv_heads: int | None = None, head_dim: int | None = None,
        n_shared_heads: int = 2, top_k: int = 2, balance_coef: float = 0.01, rope: bool = True,
        qk_norm: bool = False, skip_inactive_heads: bool = True, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=True,
                         rope=rope, qk_norm=qk_norm, impl=impl)
        n_routed = n_heads - n_shared_heads
        if not 1 <= n_shared_heads < n_heads:
            raise ValueError(f"n_shared_heads must be in [1, n_heads-1] = [1, {n_heads - 1}], got {n_shared_heads}")
        if not 1 <= top_k <= n_routed:
            raise ValueError(f"top_k must be in [1, n_routed_heads] = [1, {n_routed}], got {top_k}")
        self.n_shared, self.n_routed, self.top_k = n_shared_heads, n_routed, top_k
        self.balance_coef = balance_coef
        self.skip_inactive_heads = skip_inactive_heads
        self.router = nn.Linear(d_model, n_shared_heads + n_routed + 2, bias=False)  # [W_s; W_r; W_h]
        self._gates = None

    def head_gates(self, x, mask):
        """Gates g [B, T, H] (float32/64) and, in training, the load-balance aux loss."""
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        logits = self.router(x).to(ct)
        ls, lr, lh = logits.split([self.n_shared, self.n_routed, 2], -1)
        alpha = 2 * torch.softmax(lh, -1)
        g_s = alpha[..., :1] * self.n_shared * torch.softmax(ls, -1)
        p = torch.softmax(lr, -1)
        top_p, top_i = torch.topk(p, self.top_k, dim=-1)
        chosen = torch.zeros_like(p).scatter(-1, top_i, 1.0)
        g_r = alpha[..., 1:] * self.top_k * p * chosen / top_p.sum(-1, keepdim=True)
        if self.training:
            w = torch.ones_like(p[..., 0]) if mask is None else mask.to(ct)
            n = w.sum().clamp_min(1)
            P = (p * w[..., None]).sum((0, 1)) / n
            f = (chosen * w[..., None]).sum((0, 1)) / (n * self.top_k)
            self.aux_loss = self.balance_coef * self.n_routed * (P * f).sum()
        else:
            self.aux_loss = None
        return torch.cat([g_s, g_r], -1), chosen.bool()

    def gate_output(self, o, gate):
        return o * self._gates[..., None].to(o.dtype)

    def _forward(self, x, mask, state, return_state):
        gates, chosen = self.head_gates(x, mask)
        if self.training or not self.skip_inactive_heads or self.impl == "reference":
            self._gates = gates
            try:
                return super()._forward(x, mask, state, return_state)
            finally:
                self._gates = None
        return self._forward_active_heads(x, mask, state, return_state, gates, chosen)

    def _queries(self, x, heads, cos, sin):
        """Queries of `heads` for tokens x [..., n, d] -> [..., n, len(heads), hd] (RoPE from cos/sin)."""
        hd = self.head_dim
        W = self.q_proj.weight.view(self.n_heads, hd, self.d_model)[heads].reshape(len(heads) * hd, -1)
        q = (x @ W.t()).unflatten(-1, (len(heads), hd))
        if self.q_norm is not None:
            q = self.q_norm(q)
        return rotate_half(q, cos, sin) if self.rope else q

    def _forward_active_heads(self, x, mask, state, return_state, gates, chosen):
        B, T, _ = x.shape
        hd, H, G, hs, hr = self.head_dim, self.n_heads, self.n_heads // self.n_kv_heads, self.n_shared, self.n_routed
        k = self.k_proj(x).view(B, T, self.n_kv_heads, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, hd)
        if self.k_norm is not None:
            k = self.k_norm(k)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        if self.rope:
            k = apply_rope(k, pos, self.rope_theta)
        if state is not None:
            k_all, v_all = torch.cat([state.k.to(k.dtype), k], 1), torch.cat([state.v.to(v.dtype), v], 1)
            valid, kpos = torch.cat([state.valid, real], 1), torch.cat([state.kpos, pos], 1)
        else:
            k_all, v_all, valid, kpos = k, v, real, pos
        simple = mask is None and state is None
        kv_shared = torch.arange(hs, device=x.device) // G
        kv_routed = torch.arange(hs, H, device=x.device) // G
        o = x.new_zeros(B, T, H, hd)
        for b in range(B):
            rows = torch.arange(T, device=x.device) if simple else real[b].nonzero().squeeze(1)
            cos, sin = rope_cos_sin(pos[b, rows], hd, self.rope_theta, x.dtype) if self.rope else (None, None)
            kb, vb = k_all[b : b + 1], v_all[b : b + 1]
            # shared heads: every real token
            qs = self._queries(x[b, rows], list(range(hs)), cos, sin)[None]  # [1, n, hs, hd]
            if simple:
                os_ = softmax_attention(qs, kb[:, :, kv_shared], vb[:, :, kv_shared], causal=True, impl="torch")
            else:
                os_ = softmax_attention(qs, kb[:, :, kv_shared], vb[:, :, kv_shared], causal=True, impl="torch",
                                        q_pos=pos[b : b + 1, rows], k_pos=kpos[b : b + 1], key_mask=valid[b : b + 1])
            o[b, rows, :hs] = os_[0]
            # routed heads: the tokens that chose each head, all heads in one padded batch
            ch = chosen[b, rows].t()  # [hr, n]
            count = ch.sum(1)
            n_max = int(count.max())
            idx = torch.argsort((~ch).to(torch.int8), dim=1, stable=True)[:, :n_max]  # [hr, n_max]
            ok = torch.arange(n_max, device=x.device) < count[:, None]
            W = self.q_proj.weight.view(H, hd, self.d_model)[hs:]  # [hr, hd, d]
            qr = torch.einsum("hnd,hkd->hnk", x[b, rows][idx], W)[:, :, None]  # [hr, n_max, 1, hd]
            if self.q_norm is not None:
                qr = self.q_norm(qr)
            if self.rope:
                qr = rotate_half(qr, cos[idx], sin[idx])
            qpos = pos[b, rows][idx]  # [hr, n_max]
            Kr = kb[0][:, kv_routed].transpose(0, 1)  # [hr, L, hd]
            Vr = vb[0][:, kv_routed].transpose(0, 1)
            orr = routed_attention(qr[:, :, 0], Kr, Vr, qpos, kpos[b], valid[b], simple=simple)
            heads = torch.arange(hs, H, device=x.device)[:, None].expand(hr, n_max)
            o[b, rows[idx[ok]], heads[ok]] = orr[ok]
        y = self.o_proj((o * gates[..., None].to(o.dtype)).reshape(B, T, H * hd))
        new_state = None
        if return_state:
            seen = real.long().sum(1) + (0 if state is None else state.seen)
            new_state = KVCacheState(k=k_all, v=v_all, valid=valid, kpos=kpos, seen=seen)
        return y, new_state

    @staticmethod
    def kv_read_fraction(seq_len: int, *, n_heads: int = 8, n_shared_heads: int = 2, top_k: int = 2) -> float:
        """Share of the KV cache one decode step reads (cost model): the active heads only."""
        return (n_shared_heads + top_k) / n_heads

    def extra_repr(self):
        return (f"{super().extra_repr()}, n_shared_heads={self.n_shared}, n_routed_heads={self.n_routed}, "
                f"top_k={self.top_k}")


@register(
    "moh",
    card=Card(
        title="Mixture-of-Head attention (shared + top-k routed heads)",
        paper=Paper("MoH: Multi-Head Attention as Mixture-of-Head Attention", "Jin et al.", 2024, "2410.11842"),
        family="routed",
        complexity="O(T^2 d · active/H)",
        state_bytes=kv_cache_bytes,
        causal=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "n_shared_heads": 1, "top_k": 2},
    ),
)
class MoH(MoHAttention):
    """Mixture-of-Head attention; see the module docstring."""
