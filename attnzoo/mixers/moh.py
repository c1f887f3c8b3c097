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


# CPU flash attention that also returns the log-sum-exp (lets two key ranges be merged exactly)
_FLASH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _prefix_band_attention(q, k, v, q_pos):
    """Causal attention for queries at sorted positions q_pos [h, n] over keys in position order:
    keys [0, P0) (P0 = first query position + 1) are seen by every query, so they go unmasked through
    flash attention; the band [P0, last position] is computed explicitly with its mask; the two are
    merged through their log-sum-exps."""
    scale = q.shape[-1] ** -0.5
    P0, Lc = int(q_pos.min()) + 1, int(q_pos.max()) + 1
    o1, lse1 = _FLASH_LSE(q[None], k[None, :, :P0], v[None, :, :P0], scale=scale)
    o1, lse1 = o1[0], lse1[0].to(q.dtype)
    if Lc == P0:
        return o1
    s = torch.bmm(q, k[:, P0:Lc].transpose(1, 2)) * scale  # [h, n, band]
    s.masked_fill_(torch.arange(P0, Lc, device=q.device)[None, None, :] > q_pos[:, :, None], float("-inf"))
    lse2 = torch.logsumexp(s, -1)
    o2 = torch.bmm(torch.exp(s - lse2.clamp_min(-1e30)[..., None]), v[:, P0:Lc])
    lse = torch.logaddexp(lse1, lse2)
    return o1 * torch.exp(lse1 - lse)[..., None] + o2 * torch.exp(lse2 - lse)[..., None]


def routed_attention(q, k, v, q_pos, k_pos, valid, *, simple: bool, q_chunk: int = 64):
    """Causal attention of each head's own query subset: q [h, n, D] (sorted by position per head),
    k/v [h, L, D], q_pos [h, n], k_pos/valid [L]. Query chunks only read keys up to their last
    position when keys are in position order (`simple`), which keeps the causal saving."""
    h, n, _ = q.shape
    if simple and _FLASH_LSE is not None and q.device.type == "cpu":  # the op exists for CPU only
        return torch.cat([_prefix_band_attention(q[:, c0 : c0 + q_chunk], k, v, q_pos[:, c0 : c0 + q_chunk])
                          for c0 in range(0, n, q_chunk)], 1)
    zero, neg = q.new_zeros(()), q.new_full((), float("-inf"))
    Lk = k.shape[1]
    # keys in position order: the rows of one causal bias matrix, gathered (cheaper than comparing)
    tri = q.new_full((Lk, Lk), float("-inf")).triu_(1) if simple and Lk <= 4096 else None
    out = []
    for c0 in range(0, n, q_chunk):
        qp = q_pos[:, c0 : c0 + q_chunk]
        L = int(qp.max()) + 1 if simple else Lk
        if tri is not None:
            bias = tri.index_select(0, qp.reshape(-1)).view(h, qp.shape[1], Lk)[:, :, :L]
        else:
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
        def kv_heads(t, heads):  # t [L, Hkv, hd] -> [L, len(heads), hd]; a view when there is no GQA
            if G == 1:
                return t[:, heads.start : heads.stop]
            return t.index_select(1, torch.arange(heads.start, heads.stop, device=x.device) // G)

        o = x.new_zeros(B, T, H, hd)
        o_flat = o.view(B * T * H, hd)
        W_r = self.q_proj.weight.view(H, hd, self.d_model)[hs:]  # [hr, hd, d]
        for b in range(B):
            rows = torch.arange(T, device=x.device) if simple else real[b].nonzero().squeeze(1)
            xb = x[b] if simple else x[b].index_select(0, rows)  # [n, d]
            pb = pos[b] if simple else pos[b].index_select(0, rows)
            cos, sin = rope_cos_sin(pb, hd, self.rope_theta, x.dtype) if self.rope else (None, None)
            kb, vb = k_all[b], v_all[b]  # [L, Hkv, hd]
            # shared heads: every real token
            qs = self._queries(xb, list(range(hs)), cos, sin)[None]  # [1, n, hs, hd]
            ks, vs = kv_heads(kb, range(hs))[None], kv_heads(vb, range(hs))[None]
            if simple:
                o[b, :, :hs] = softmax_attention(qs, ks, vs, causal=True, impl="torch")[0]
            else:
                o[b, rows, :hs] = softmax_attention(qs, ks, vs, causal=True, impl="torch", q_pos=pb[None],
                                                    k_pos=kpos[b : b + 1], key_mask=valid[b : b + 1])[0]
            # routed heads: the tokens that chose each head, all routed heads in one padded batch
            ch = chosen[b].t() if simple else chosen[b].index_select(0, rows).t()  # [hr, n]
            count = ch.sum(1)
            n_max = int(count.max())
            idx = torch.argsort((~ch).to(torch.int8), dim=1, stable=True)[:, :n_max]  # [hr, n_max]
            flat = idx.reshape(-1)
            xr = xb.index_select(0, flat).view(hr, n_max, -1)
            qr = torch.bmm(xr, W_r.transpose(1, 2))[:, :, None]  # [hr, n_max, 1, hd]
            if self.q_norm is not None:
                qr = self.q_norm(qr)
            if self.rope:
                qr = rotate_half(qr, cos.index_select(0, flat).view(hr, n_max, 1, -1),
                                 sin.index_select(0, flat).view(hr, n_max, 1, -1))
            qpos = pb.index_select(0, flat).view(hr, n_max)
            # padding slots (beyond a head's count) repeat the head's last query position, keeping
            # positions sorted so query chunks stay narrow; their outputs are dropped below
            last = torch.gather(qpos, 1, (count - 1).clamp_min(0)[:, None])
            qpos = torch.where(torch.arange(n_max, device=x.device) < count[:, None], qpos, last)
            Kr = kv_heads(kb, range(hs, H)).transpose(0, 1)  # [hr, L, hd]
            Vr = kv_heads(vb, range(hs, H)).transpose(0, 1)
            orr = routed_attention(qr[:, :, 0], Kr, Vr, qpos, kpos[b], valid[b], simple=simple)
            ok = (torch.arange(n_max, device=x.device) < count[:, None]).reshape(-1).nonzero().squeeze(1)
            token = rows.index_select(0, flat.index_select(0, ok))
            head = hs + torch.div(ok, n_max, rounding_mode="floor")
            o_flat.index_copy_(0, (b * T + token) * H + head, orr.reshape(-1, hd).index_select(0, ok))
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
