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

Inference (eval, `skip_inactive_heads=True`) computes attention only for the active (token, head)
pairs. Prefill: the shared heads for every token (one causal SDPA call); for each routed head only
the tokens that chose it, gathered per head (sorted by position) and attended against that head's
keys with `subset_causal_attention` (attnzoo/ops/softmax/subset.py: causal attention for sorted
query subsets, cost proportional to the queries kept). Decode (one new token per row): each active
head attends over a view of its cache, so only the active heads' keys and values are read. Keys and
values are projected (and k rotated) once for all tokens, as every query needs them; the RoPE
angles are computed once and gathered for the routed queries. The q projection is done for every
head in one matmul and W_o applied to a [T, H·hd] buffer that is zero for the unselected heads:
projecting only the selected rows per routed head needs d-wide row gathers, which cost more than
they save at 50% activity (T=4096, d=512, 1 CPU thread: gather 16.6 ms + projection 7.6 ms vs
11.9 ms to project every token; scattering W_o per head is the same trade). So the saving is the attention's:
the best possible time ratio is (4·d + a·T) / (4·d + T) for active fraction a. Training and
`skip_inactive_heads=False` compute every head and multiply by the gates (zero for inactive
heads): the same output. `block_size` is the position block of the subset attention (an int, a
tuple of levels, or None: chosen from the density of selected queries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.layers import rope_cos_sin, rotate_half, token_positions
from attnzoo.mixers.softmax import KVCacheState, SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.softmax.subset import subset_causal_attention
from attnzoo.registry import Card, Paper, register


class MoHAttention(SoftmaxAttention):
    state_class = KVCacheState

    def __init__(
        self, d_model: int, *, n_heads: int = 8, n_kv_heads: int | None = None, head_dim: int | None = None,
        n_shared_heads: int = 2, top_k: int = 2, balance_coef: float = 0.01, rope: bool = True,
        qk_norm: bool = False, skip_inactive_heads: bool = True, block_size: int | tuple | None = None,
        impl: str = "auto",
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
        sizes = () if block_size is None else tuple(block_size) if isinstance(block_size, tuple) else (block_size,)
        if not all(isinstance(b, int) and b >= 1 for b in sizes):
            raise ValueError(f"block_size must be None, an int >= 1 or a tuple of them, got {block_size!r}")
        self.block_size = block_size
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

    @staticmethod
    def _take_rows(t, idx):
        """t [B, n, *rest], idx [B, m] -> t[b, idx[b]] [B, m, *rest] (a row gather, faster than gather)."""
        B, n = t.shape[:2]
        off = idx if B == 1 else idx + n * torch.arange(B, device=idx.device)[:, None]
        return t.reshape(B * n, *t.shape[2:]).index_select(0, off.reshape(-1)).view(B, idx.shape[1], *t.shape[2:])

    def _kv_heads(self, t, first, last):
        """t [B, Hkv, L, hd] -> the key/value heads of query heads first..last-1 (a view without GQA)."""
        G = self.n_heads // self.n_kv_heads
        if G == 1:
            return t[:, first:last]
        return t.index_select(1, torch.arange(first, last, device=t.device) // G)

    def _attend(self, xq, qpos, cos, sin, K, V, gates, chosen, dense):
        """Gated outputs [Bq, n, H, hd] of the active (token, head) pairs of xq [Bq, n, d] at sorted
        positions qpos [Bq, n]; K/V [Bq, Hkv, L, hd] with key j at position j; dense: qpos = 0..L-1."""
        Bq, n, d = xq.shape
        H, hd, hs, hr = self.n_heads, self.head_dim, self.n_shared, self.n_routed
        buf = xq.new_zeros(Bq, n, H, hd)
        # one projection for every head (see the module docstring: per-head row gathers cost more)
        q = self.q_proj(xq).view(Bq, n, H, hd)
        if self.q_norm is not None:
            q = self.q_norm(q)
        # shared heads: every query token
        qs = q[:, :, :hs]
        if self.rope:
            qs = rotate_half(qs, cos[:, :, None], sin[:, :, None])
        qs = qs.transpose(1, 2)
        Ks, Vs = self._kv_heads(K, 0, hs), self._kv_heads(V, 0, hs)
        if dense:
            os_ = F.scaled_dot_product_attention(qs, Ks, Vs, is_causal=True)
        else:
            os_ = subset_causal_attention(qs, Ks, Vs, qpos[:, None].expand(Bq, hs, n), block=self.block_size)
        buf[:, :, :hs] = os_.transpose(1, 2) * gates[..., :hs, None].to(xq.dtype)
        # routed heads: per head, the tokens that chose it (sorted), padded to the largest count
        ch = chosen.transpose(1, 2)  # [Bq, hr, n]
        count = ch.sum(-1)
        n_max = int(count.max())
        idx = torch.argsort((~ch).to(torch.int8), dim=-1, stable=True)[..., :n_max]  # [Bq, hr, n_max]
        flat = idx.reshape(Bq, hr * n_max)
        heads = torch.arange(hs, H, device=xq.device).repeat_interleave(n_max)  # head of each slot
        qr = self._take_rows(q.reshape(Bq, n * H, hd), flat * H + heads).view(Bq, hr, n_max, hd)
        if self.rope:
            half = cos.shape[-1]
            qr = rotate_half(qr, self._take_rows(cos, flat).view(Bq, hr, n_max, half),
                             self._take_rows(sin, flat).view(Bq, hr, n_max, half))
        qp = self._take_rows(qpos, flat).view(Bq, hr, n_max)
        # routed keys contiguous per head: the subset attention re-reads key prefixes once per block
        o_r = subset_causal_attention(qr, self._kv_heads(K, hs, H).contiguous(), self._kv_heads(V, hs, H).contiguous(),
                                      qp, count, block=self.block_size)  # [Bq, hr, n_max, hd], zero beyond count
        g_r = torch.gather(gates[..., hs:].transpose(1, 2), 2, idx).to(xq.dtype)
        # each (token, head) cell is written once; padding slots write 0 into unselected cells
        buf[:, :, hs:].scatter_(1, idx.transpose(1, 2)[..., None].expand(Bq, n_max, hr, hd),
                                (o_r * g_r[..., None]).transpose(1, 2))
        return buf

    def _decode_step(self, x, cos, sin, k_all, v_all, valid, gates, chosen, real):
        """One new token per row: it sees every valid cached key, so each active head is one
        attention over the whole cache (key-masked only where the cache holds padding). Runs of
        consecutive key/value heads with the same number of active query heads share one SDPA call
        on a view of the cache: only the active heads' keys and values are read, nothing is copied."""
        B = x.shape[0]
        H, hd, hs, G = self.n_heads, self.head_dim, self.n_shared, self.n_heads // self.n_kv_heads
        q = self.q_proj(x).view(B, 1, H, hd)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.rope:
            q = rotate_half(q, cos[:, :, None], sin[:, :, None])
        o = x.new_zeros(B, 1, H, hd)
        active = torch.cat([torch.ones_like(chosen[:, 0, :hs]), chosen[:, 0]], -1)  # [B, H]
        all_valid = bool(valid.all())
        for b in range(B):
            if not bool(real[b, 0]):
                continue
            heads = active[b].nonzero().squeeze(1)
            per_kv = torch.bincount(heads // G, minlength=self.n_kv_heads).tolist()  # active q heads per kv head
            keep = None if all_valid else valid[b].view(1, 1, 1, -1)
            g, pos_in_heads = 0, 0
            while g < self.n_kv_heads:
                r = per_kv[g]
                if r == 0:
                    g += 1
                    continue
                g1 = g
                while g1 < self.n_kv_heads and per_kv[g1] == r:
                    g1 += 1
                hq = heads[pos_in_heads : pos_in_heads + r * (g1 - g)]  # sorted: grouped by kv head
                qq = q[b, 0].index_select(0, hq).view(1, g1 - g, r, hd)
                kk, vv = k_all[b, :, g:g1].transpose(0, 1)[None], v_all[b, :, g:g1].transpose(0, 1)[None]
                oo = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=keep)
                o[b, 0].index_copy_(0, hq, oo.reshape(-1, hd) * gates[b, 0].index_select(0, hq)[:, None].to(o.dtype))
                pos_in_heads += r * (g1 - g)
                g = g1
        return o

    def _forward_active_heads(self, x, mask, state, return_state, gates, chosen):
        B, T, _ = x.shape
        hd, Hkv = self.head_dim, self.n_kv_heads
        k = self.k_proj(x).view(B, T, Hkv, hd)
        v = self.v_proj(x).view(B, T, Hkv, hd)
        if self.k_norm is not None:
            k = self.k_norm(k)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        cos, sin = rope_cos_sin(pos, hd, self.rope_theta, x.dtype) if self.rope else (None, None)
        if self.rope:
            k = rotate_half(k, cos[:, :, None], sin[:, :, None])  # once for all tokens
        if state is not None:
            k_all, v_all = torch.cat([state.k.to(k.dtype), k], 1), torch.cat([state.v.to(v.dtype), v], 1)
            valid, kpos = torch.cat([state.valid, real], 1), torch.cat([state.kpos, pos], 1)
        else:
            k_all, v_all, valid, kpos = k, v, real, pos
        if T == 1 and state is not None:
            o = self._decode_step(x, cos, sin, k_all, v_all, valid, gates, chosen, real)
        elif mask is None and (state is None or bool(state.valid.all())):
            # every row has the same positions: one batched pass, keys already in position order
            o = self._attend(x, pos, cos, sin, k_all.transpose(1, 2), v_all.transpose(1, 2), gates, chosen,
                             dense=state is None)
        else:
            # per row: real queries only, real keys compacted (the j-th real key has position j)
            o = x.new_zeros(B, T, self.n_heads, hd)
            for b in range(B):
                rows, keys = real[b].nonzero().squeeze(1), valid[b].nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                K, V = k_all[b].index_select(0, keys), v_all[b].index_select(0, keys)
                cs = (None, None) if cos is None else (cos[b, rows][None], sin[b, rows][None])
                o[b, rows] = self._attend(x[b, rows][None], pos[b, rows][None], *cs, K.transpose(0, 1)[None],
                                          V.transpose(0, 1)[None], gates[b, rows][None], chosen[b, rows][None],
                                          dense=state is None)[0]
        y = self.o_proj(o.reshape(B, T, self.n_heads * hd))
        new_state = None
        if return_state:
            seen = real.long().sum(1) + (0 if state is None else state.seen)
            new_state = KVCacheState(k=k_all, v=v_all, valid=valid, kpos=kpos, seen=seen)
        return y, new_state

    def extra_repr(self):
        return (f"{super().extra_repr()}, n_shared_heads={self.n_shared}, n_routed_heads={self.n_routed}, "
                f"top_k={self.top_k}")


def kv_read_fraction(seq_len: int, n_heads: int = 8, n_shared_heads: int = 2, top_k: int = 2) -> float:
    """Share of the KV cache one decode step reads (cost model): the active heads only."""
    return (n_shared_heads + top_k) / n_heads


@register(
    "moh",
    card=Card(
        title="Mixture-of-Head attention (shared + top-k routed heads)",
        paper=Paper("MoH: Multi-Head Attention as Mixture-of-Head Attention", "Jin et al.", 2024, "2410.11842"),
        family="routed",
        complexity="O(T^2 d · active/H)",
        state_bytes=kv_cache_bytes,
        kv_read_fraction=kv_read_fraction,
        causal=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "n_shared_heads": 1, "top_k": 2, "block_size": 4},
    ),
)
class MoH(MoHAttention):
    """Mixture-of-Head attention; see the module docstring."""
