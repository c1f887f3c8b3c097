"""The delta-rule providers of `attnzoo bench speed` (issue #22's goals table): ours, the Triton kernels of
ops/delta (attnzoo_gated_delta with a scalar gate per head, attnzoo_delta without), and fla 0.6.0's
chunk_gated_delta_rule / chunk_delta_rule (decode: fused_recurrent_gated_delta_rule /
fused_recurrent_delta_rule) on the same inputs: q, v ~ N(0, 1), k L2-normalised per head, beta = sigmoid(N(0, 1)),
g = logsigmoid(N(0, 1)) / divisor (the bench's gate regimes: weak 16, strong 1), float32 gates.

FLOPs are a model (the chunked WY form at chunks of 64, forward): per token and head 6·D² (the state's
products: W S, Q S, Kᵀ V_new) + 10·64·D (the intra-chunk K Kᵀ, Q Kᵀ and their products with V, U, W);
fwd+bwd 3.5x, as the GLA rows count; decode 4·D² per token and head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DELTA = ("attnzoo_gated_delta", "attnzoo_delta", "fla_gated_delta", "fla_delta")
GATED_DELTA = ("attnzoo_gated_delta", "fla_gated_delta")


def fla_delta_ops() -> dict:
    """fla's delta-rule ops by provider (decode under "<provider>:decode"), or {} when fla is missing."""
    try:
        from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception:
        return {}
    return {"fla_gated_delta": chunk_gated_delta_rule, "fla_delta": chunk_delta_rule,
            "fla_gated_delta:decode": fused_recurrent_gated_delta_rule, "fla_delta:decode": fused_recurrent_delta_rule}


def delta_flops(B, T, H, D, mode):
    f = B * H * T * (6 * D * D + 10 * 64 * D)
    return {"fwd": f, "fwdbwd": 3.5 * f, "decode": 4 * B * H * D * D}.get(mode)


def delta_call(provider, B, T, H, D, mode, *, dtype=torch.bfloat16, fla=None, divisor=16.0, device="cuda"):
    """(fn, flops) for one delta-rule provider and case, or None (an fla op that is missing). Ours runs
    impl="triton" on CUDA, impl="torch" elsewhere (the CPU tests). decode: one token with a given state."""
    from attnzoo.ops.delta import delta_rule

    ours = provider.startswith("attnzoo")
    if not ours and (fla is None or (provider + (":decode" if mode == "decode" else ""))
                     not in fla):
        return None
    gated = provider in GATED_DELTA
    rg = mode == "fwdbwd"
    n = 1 if mode == "decode" else T
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    q, v = r(B, n, H, D).to(dtype), r(B, n, H, D).to(dtype)
    k = F.normalize(r(B, n, H, D), dim=-1).to(dtype)
    beta = torch.sigmoid(r(B, n, H)).to(dtype)
    g = F.logsigmoid(r(B, n, H)) / divisor if gated else None
    leaves = [t for t in (q, k, v, beta, g) if t is not None]
    for t in leaves:
        t.requires_grad_(rg)
    impl = "triton" if torch.device(device).type == "cuda" else "torch"
    kw = {"g": g} if gated else {}
    if mode == "decode":
        S = r(B, H, D, D)
        if ours:
            def fn():
                with torch.no_grad():
                    return delta_rule(q, k, v, beta, g, initial_state=S, output_final_state=True, impl=impl)
        else:
            f = fla[provider + ":decode"]
            fn = lambda: f(q=q, k=k, v=v, beta=beta, scale=D ** -0.5, initial_state=S,  # noqa: E731
                           output_final_state=True, **kw)
        return fn, delta_flops(B, 1, H, D, mode)
    if ours:
        op = lambda: delta_rule(q, k, v, beta, g, impl=impl)[0]  # noqa: E731
    else:
        f = fla[provider]
        op = lambda: f(q=q, k=k, v=v, beta=beta, scale=D ** -0.5, **kw)[0]  # noqa: E731
    do = torch.randn_like(v)

    def fn():
        o = op()
        if rg:
            return torch.autograd.grad(o, leaves, do)
        return o
    return fn, delta_flops(B, T, H, D, mode)
