"""Cases for the sequence-parallel ops: global inputs built from a seed on every rank, sliced per rank,
and the single-process truth (the public op with impl="reference" run shard after shard, each from the
previous shard's final state, so the states at every shard boundary are at hand).

Loss (the same in both): Σ <o, W> + Σ_r <S_r, U_r>, S_r the state at the end of shard r.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.parallel import SCHEMES, sequence_parallel, shard_bounds

B, H, K, V = 2, 2, 4, 3


def case(op, gate, *, T=23, dtype=torch.float64, init=True, scheme="allscan", pieces=2, overlap=True,
         normalize=False, gamma=False, padded=False):
    assert scheme in SCHEMES
    return dict(op=op, gate=gate, T=T, dtype=dtype, init=init, scheme=scheme, pieces=pieces, overlap=overlap,
                normalize=normalize, gamma=gamma, padded=padded)


CASES = {
    "gla_vector_init_f64": case("gla", "vector"),
    "gla_scalar_gamma_f64": case("gla", "scalar", init=False, gamma=True, pieces=3),
    "gla_nogate_normalize_f64": case("gla", None, normalize=True, pieces=1),
    "gla_vector_f32": case("gla", "vector", dtype=torch.float32, pieces=4),
    "gla_vector_ring_f64": case("gla", "vector", scheme="ring"),
    "gla_scalar_allgather_f64": case("gla", "scalar", scheme="allgather"),
    "gla_vector_no_overlap_short_f64": case("gla", "vector", T=5, overlap=False),
    "gla_vector_padded_f64": case("gla", "vector", padded=True),
    "delta_gated_init_f64": case("delta", "scalar"),
    "delta_plain_f64": case("delta", None, init=False, pieces=3),
    "delta_gated_f32": case("delta", "scalar", dtype=torch.float32),
    "delta_gated_ring_f64": case("delta", "scalar", scheme="ring"),
    "delta_gated_allgather_f64": case("delta", "scalar", scheme="allgather"),
    "delta_gated_padded_f64": case("delta", "scalar", T=40, padded=True),
    # overlap=None on the CPU: one fused local pass (GLA: the op's final state is B; delta rule: the op
    # on identity columns), the scan after it; the cases above with overlap=True prepare the map first
    "gla_vector_init_fused_f64": case("gla", "vector", overlap=None),
    "gla_scalar_gamma_fused_f32": case("gla", "scalar", gamma=True, overlap=None, dtype=torch.float32),
    "delta_gated_init_fused_f64": case("delta", "scalar", overlap=None),
    "delta_plain_fused_allgather_f64": case("delta", None, overlap=None, scheme="allgather"),
    "delta_gated_fused_f32": case("delta", "scalar", overlap=None, dtype=torch.float32),
}
GRADS = ("q", "k", "v", "g", "beta", "g_gamma", "initial_state")


def make_inputs(name, world):
    c = CASES[name]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    T, f64 = c["T"], torch.float64

    def rnd(*s):
        return torch.randn(*s, generator=gen, dtype=f64)

    x = {"q": rnd(B, T, H, K), "k": rnd(B, T, H, K), "v": rnd(B, T, H, V)}
    if c["op"] == "delta":
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(rnd(B, T, H))
    if c["gate"] == "vector":
        x["g"] = F.logsigmoid(rnd(B, T, H, K) + 2.0)
    elif c["gate"] == "scalar":
        x["g"] = -2.0 * torch.rand(B, T, H, generator=gen, dtype=f64)
    if c["gamma"]:
        x["g_gamma"] = -0.1 * torch.rand(H, generator=gen, dtype=f64)
    if c["init"]:
        x["initial_state"] = rnd(B, H, K, V + (1 if c["normalize"] else 0))
    if c["padded"]:  # row 1: a padded stretch covering whole shards (k = v = 0, no decay, beta = 0)
        keep = torch.ones(B, T, dtype=torch.bool)
        keep[1, T // 4: 3 * T // 4] = False
        for name in ("k", "v", "g", "beta"):
            if name in x:
                x[name] = torch.where(keep.view(B, T, *([1] * (x[name].dim() - 2))), x[name], 0.0)
    x = {n: t.to(c["dtype"]) for n, t in x.items()}
    Vs = V + (1 if c["normalize"] else 0)
    W = rnd(B, T, H, V).to(c["dtype"])
    U = [rnd(B, H, K, Vs) for _ in range(world)]
    return x, W, U


def _call(c, x, **kw):
    if c["op"] == "gla":
        return gated_linear_attention(x["q"], x["k"], x["v"], x.get("g"), g_gamma=x.get("g_gamma"),
                                      initial_state=x.get("initial_state"), output_final_state=True,
                                      normalize=c["normalize"], **kw)
    return delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"), initial_state=x.get("initial_state"),
                      output_final_state=True, **kw)


def _per_token(name):
    return name not in ("g_gamma", "initial_state")


def run_case_on_rank(rank, world, name):
    """This rank's o, end state and input gradients, run sequence-parallel."""
    c = CASES[name]
    x, W, U = make_inputs(name, world)
    a, b = shard_bounds(c["T"], world, rank)
    x = {n: (t[:, a:b] if _per_token(n) else t).clone().requires_grad_() for n, t in x.items()}
    with sequence_parallel(scheme=c["scheme"], pieces=c["pieces"], overlap=c["overlap"], timeout=30):
        o, S = _call(c, x, impl="torch")
    loss = (o * W[:, a:b]).sum() + (S * U[rank].to(S.dtype)).sum()
    grads = torch.autograd.grad(loss, list(x.values()))
    return {"o": o.detach(), "S": S.detach(), "grads": {n: g for n, g in zip(x, grads)}}


def truth(name, world):
    """The same quantities from one process, in float64 from the (rounded) inputs: (o [B, T, ...],
    [S_r], {name: grad})."""
    c = CASES[name]
    x, W, U = make_inputs(name, world)
    x = {n: t.double().requires_grad_() for n, t in x.items()}
    W = W.double()
    S, outs, states, loss = x.get("initial_state"), [], [], 0.0
    for r in range(world):
        a, b = shard_bounds(c["T"], world, r)
        xr = {n: (t[:, a:b] if _per_token(n) else t) for n, t in x.items()}
        xr["initial_state"] = S
        o, S = _call(c, xr, impl="reference")
        outs.append(o)
        states.append(S)
        loss = loss + (o * W[:, a:b]).sum() + (S * U[r]).sum()
    grads = torch.autograd.grad(loss, list(x.values()))
    return torch.cat(outs, 1).detach(), [s.detach() for s in states], dict(zip(x, grads))


def run_all(rank, world, names):
    return {n: run_case_on_rank(rank, world, n) for n in names}
