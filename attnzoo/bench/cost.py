"""Per-token inference cost model (Kinetics, Sadhukhan et al. 2025, arXiv:2506.05333).

    eFLOPs = C_comp + E · C_mem          E = 562.5 FLOPs per byte by default (Kinetics' E_flops)

Costs of generating one token at context length L, for one attention layer (add 2P for the
parameter FLOPs; parameter reads are treated as amortised over the batch, as in Kinetics):
- dense KV cache:   C_comp = 4·L·H_q·d          (q·k and p·v over L keys)
                    C_mem  = 2·L·H_kv·d·b        (read K and V, b bytes per element)
- block top-k:      the L keys become min(L, Bud), Bud = local + block_size·top_k, plus the search
                    over one pooled key per block: 2·(L/bs)·H_q·d FLOPs, (L/bs)·H_kv·d·b bytes
- fixed state:      C_mem = state bytes (read once per token), C_comp = f·state elements
                    (f = 4: update and read-out of a matrix state)
Whole generations (N samples sharing an L_in prompt, L_out new tokens each) follow Kinetics:
    dense:  C_comp = N[2P·L_out + 2(2L_in + L_out)·L_out·H_q·d],  C_mem = 2(2L_in + N·L_out)·L_out·H_kv·d
    sparse: the KV term Σ_t (L_in + t) becomes Bud·L_out − ½·max(0, Bud − L_in)²  (per sample)
`mixer_token_cost` applies the per-token forms to any registered mixer from its card alone
(`Card.bytes_for`, `Card.decode_cost_fact`): a state that grows with L is a KV cache (2 FLOPs per
cached element read), a state that does not is fixed, a card with `tokens_read_per_step`
(block_sparse) reads only its budget, and one with `kv_read_fraction` (moh, routing) reads that
fraction of its cache. Constructor defaults, n_heads where the mixer has heads, and any kwargs given.
"""

from __future__ import annotations

import os

from dataclasses import dataclass

E_FLOPS_PER_BYTE = 562.5
CONTEXTS = (4096, 32768, 131072)


@dataclass(frozen=True)
class TokenCost:
    kind: str
    flops: float
    bytes: float

    def eflops(self, E: float = E_FLOPS_PER_BYTE) -> float:
        return self.flops + E * self.bytes


def _check(L, **kw):
    if L < 1:
        raise ValueError(f"context length L must be >= 1, got {L}")
    for k, v in kw.items():
        if v is not None and v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")


def dense_kv_cost(L, *, n_heads, n_kv_heads=None, head_dim, bytes_per_elem=2, n_params=0) -> TokenCost:
    """One token attending to all L cached keys."""
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    _check(L, n_params=n_params)
    return TokenCost("dense KV", 2 * n_params + 4 * L * n_heads * head_dim, 2 * L * hkv * head_dim * bytes_per_elem)


def block_budget(*, block_size, top_k, local=0) -> int:
    return local + block_size * top_k


def block_topk_cost(L, *, n_heads, n_kv_heads=None, head_dim, block_size=16, top_k=64, local=0,
                    bytes_per_elem=2, n_params=0) -> TokenCost:
    """One token attending to min(L, Bud) keys plus the block search (one pooled key per block)."""
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    _check(L, n_params=n_params, block_size=block_size, top_k=top_k, local=local)
    keys = min(L, block_budget(block_size=block_size, top_k=top_k, local=local))
    nb = L / block_size
    flops = 2 * n_params + 4 * keys * n_heads * head_dim + 2 * nb * n_heads * head_dim
    mem = (2 * keys + nb) * hkv * head_dim * bytes_per_elem
    return TokenCost("block top-k", flops, mem)


def fixed_state_cost(state_bytes, *, bytes_per_elem=4, flops_per_elem=4, n_params=0) -> TokenCost:
    """A recurrent state of state_bytes read (and updated) once per token, whatever L."""
    _check(1, state_bytes=state_bytes, n_params=n_params)
    return TokenCost("fixed state", 2 * n_params + flops_per_elem * state_bytes / bytes_per_elem, state_bytes)


def dense_generation_cost(L_in, L_out, *, N=1, n_params=0, n_heads, n_kv_heads=None, head_dim):
    """Kinetics' dense cost of N samples of L_out tokens after a shared L_in prompt: (C_comp, C_mem)."""
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    comp = N * (2 * n_params * L_out + 2 * (2 * L_in + L_out) * L_out * n_heads * head_dim)
    mem = 2 * (2 * L_in + N * L_out) * L_out * hkv * head_dim
    return comp, mem


def sparse_kv_term(L_in, L_out, budget) -> float:
    """Σ_t min(Bud, L_in + t) in Kinetics' closed form: Bud·L_out − ½·max(0, Bud − L_in)²."""
    return budget * L_out - 0.5 * max(0, budget - L_in) ** 2


def block_topk_generation_cost(L_in, L_out, *, N=1, n_params=0, n_heads, n_kv_heads=None, head_dim,
                               block_size=16, top_k=64, local=0):
    """Kinetics' block top-k cost (KV term replaced, plus the block search): (C_comp, C_mem)."""
    hkv = n_heads if n_kv_heads is None else n_kv_heads
    kv = sparse_kv_term(L_in, L_out, block_budget(block_size=block_size, top_k=top_k, local=local))
    search = (2 * L_in + L_out) / block_size * L_out
    comp = N * (2 * n_params * L_out + 4 * kv * n_heads * head_dim + search * n_heads * head_dim)
    mem = N * (4 * kv + search) * hkv * head_dim
    return comp, mem


def eflops(comp, mem, E: float = E_FLOPS_PER_BYTE) -> float:
    return comp + E * mem


def mixer_token_cost(name, L, *, d_model=2048, n_heads=16, **kwargs) -> TokenCost:
    """Per-token cost of one layer of the registered mixer `name` at context L, from its card only
    (constructor defaults, n_heads if the mixer has heads, then `kwargs`)."""
    from attnzoo.registry import constructor_defaults, get_card, get_class

    card = get_card(name)
    if not card.decode:
        raise ValueError(f"{name} cannot decode (card.decode=False): no per-token cost")
    cfg = constructor_defaults(get_class(name))
    if "n_heads" in cfg:
        cfg["n_heads"] = n_heads
    cfg.update(kwargs)
    s = card.bytes_for(L, d_model=d_model, **cfg)
    s2 = card.bytes_for(2 * L, d_model=d_model, **cfg)
    if s2 <= s:  # does not grow with L: fixed (or capped) state
        return fixed_state_cost(s)
    per_token = (s2 - s) / L  # bytes one more cached token adds
    keys = card.decode_cost_fact("tokens_read_per_step", L, **cfg)
    if keys is not None:
        bs = 16
        search = per_token / 2 * L / bs  # one pooled key (half a K+V entry) per block
        mem = keys * per_token + search
        return TokenCost("block top-k", 2 * mem / 4, mem)
    f = card.decode_cost_fact("kv_read_fraction", L, **cfg)
    if f is not None:  # moh: only active heads' K/V; routing: own cluster + local window
        return TokenCost(f"KV x {f:.2g}", 2 * f * s / 4, f * s)
    return TokenCost("dense KV", 2 * s / 4, s)


def cost_table(*, contexts=CONTEXTS, d_model=2048, n_heads=16, E=E_FLOPS_PER_BYTE):
    """Rows (name, kind, [eFLOPs at each L]) for every registered mixer that can decode."""
    from attnzoo.registry import get_card, list_mixers

    rows = []
    for name in list_mixers():
        if not get_card(name).decode:
            continue
        costs = [mixer_token_cost(name, L, d_model=d_model, n_heads=n_heads) for L in contexts]
        rows.append((name, costs[0].kind, costs))
    return rows


def plot_cost(path, *, d_model=2048, n_heads=16, E=E_FLOPS_PER_BYTE, max_log2=17):
    """Save eFLOPs per token vs context length (log-log) for every decoding mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ls = [2**i for i in range(8, max_log2 + 1)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, _, _) in enumerate(cost_table(contexts=(Ls[0],), d_model=d_model, n_heads=n_heads)):
        ys = [mixer_token_cost(name, L, d_model=d_model, n_heads=n_heads).eflops(E) for L in Ls]
        ax.plot(Ls, ys, marker=".", label=name, linestyle=("-", "--", ":")[i // 10 % 3])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel(f"eFLOPs per generated token (E={E})")
    ax.set_title(f"one layer, d_model={d_model}, {n_heads} heads, state as stored (fp32)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_cost_table(*, d_model=2048, n_heads=16, E=E_FLOPS_PER_BYTE, contexts=CONTEXTS, plot=None):
    """The `attnzoo cost` job: a rich table of eFLOPs per token at each context, and the plot."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"eFLOPs per generated token, one layer (d_model={d_model}, {n_heads} heads, E={E})")
    t.add_column("mixer")
    t.add_column("cost model")
    for L in contexts:
        t.add_column(f"L={L // 1024}k", justify="right")
    for name, kind, costs in cost_table(contexts=contexts, d_model=d_model, n_heads=n_heads, E=E):
        t.add_row(name, kind, *(f"{c.eflops(E):.3g}" for c in costs))
    Console().print(t)
    if plot:
        plot_cost(plot, d_model=d_model, n_heads=n_heads, E=E)
        print(f"plot: {plot}")
