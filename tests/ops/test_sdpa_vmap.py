"""ops.softmax.sdpa under torch.func.vmap: one folded SDPA call (not SDPA's batching rule), equal to one
call per member, forward and gradients, with a shared or a per-member mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from attnzoo.ops.softmax import sdpa as sdpa_mod


def _inputs(G=3, B=2, H=2, T=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(G, B, H, T, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("mask", [None, "shared", "per_member", "causal"])
def test_vmapped_sdpa_equals_a_call_per_member(mask, monkeypatch):
    q, k, v = _inputs()
    G, B, H, T, _ = q.shape
    masks = torch.rand(G, B, 1, T, T, generator=torch.Generator().manual_seed(1)) > 0.3
    masks[..., 0] = True                                       # every row sees a key
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(sdpa_mod.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))

    def one(q, k, v, m):
        return sdpa_mod.sdpa(q, k, v, attn_mask=m, is_causal=mask == "causal", scale=0.3)

    if mask == "per_member":
        out = vmap(one)(q, k, v, masks)
    else:
        m = masks[0] if mask == "shared" else None
        out = vmap(one, in_dims=(0, 0, 0, None))(q, k, v, m)
    assert calls == [torch.Size([G * B, H, T, q.shape[-1]])]  # one folded call, not SDPA's batching rule
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    for i in range(G):
        m = masks[i] if mask == "per_member" else masks[0] if mask == "shared" else None
        ref = real(q[i], k[i], v[i], attn_mask=m, is_causal=mask == "causal", scale=0.3)
        assert torch.allclose(out[i], ref, atol=1e-12)
        ref_grads = torch.autograd.grad(ref, (q, k, v), do[i])
        for gx, rx in zip(grads, ref_grads):
            assert torch.allclose(gx[i], rx[i], atol=1e-12)


def test_outside_vmap_sdpa_is_the_plain_call():
    q, k, v = (x[0].detach() for x in _inputs())
    assert torch.equal(sdpa_mod.sdpa(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_compiled_vmapped_sdpa_gives_every_gradient():
    """Under torch.compile the folded Function (its backward replays a graph built in the forward) is not
    taken: dynamo traced it into missing and wrong gradients (a grouped softmax LM: 4 of 13 stacked
    parameters without a gradient, the rest off by up to 0.057); SDPA's own path is exact."""
    q, k, v = _inputs(T=5, D=4)

    def loss(q, k, v):
        return vmap(lambda a, b, c: sdpa_mod.sdpa(a, b, c, is_causal=True))(q, k, v).pow(2).sum()

    ref = torch.autograd.grad(loss(q, k, v), (q, k, v))
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(q, k, v), (q, k, v))
    for gx, rx in zip(got, ref):
        assert torch.allclose(gx, rx, atol=1e-10)
