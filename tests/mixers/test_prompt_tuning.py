import pytest
import torch

import attnzoo
from attnzoo.mixers.layers import apply_rope
from attnzoo.mixers.prompt_tuning import prompt_term

F64 = torch.float64
B, T, D, H, HD, N = 2, 9, 16, 2, 8, 3


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def build(mode="exact", causal=True, seed=0):
    torch.manual_seed(seed)
    return attnzoo.build("prompt_tuning", d_model=D, n_heads=H, n_prompts=N, mode=mode, causal=causal).double()


def qkv(m, x):
    pos = torch.arange(T).expand(B, T)
    q = apply_rope(m.q_proj(x).view(B, T, H, HD), pos)
    k = apply_rope(m.k_proj(x).view(B, T, H, HD), pos)
    return q, k, m.v_proj(x).view(B, T, H, HD)


def logits_and_values(m, x, causal):
    """Dense scores over [prompts ; tokens] with the token mask, and the concatenated values."""
    q, k, v = qkv(m, x)
    kk = torch.cat([m.prompt_k[None].expand(B, N, H, HD), k], 1)
    vv = torch.cat([m.prompt_v[None].expand(B, N, H, HD), v], 1)
    s = torch.einsum("bihd,bjhd->bhij", q, kk) / HD**0.5
    if causal:
        allowed = torch.ones(T, N + T, dtype=torch.bool)
        allowed[:, N:] = torch.ones(T, T, dtype=torch.bool).tril()
        s = s.masked_fill(~allowed, float("-inf"))
    return s, vv


@pytest.mark.parametrize("causal", [True, False])
def test_exact_prompt_tuning_is_attention_over_concatenated_keys_and_values(causal):
    m = build(causal=causal)
    x = rand(B, T, D, seed=1)
    s, vv = logits_and_values(m, x, causal)
    o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), vv)
    torch.testing.assert_close(m(x), m.o_proj(o.reshape(B, T, D)))


def test_exact_decomposes_into_token_and_prompt_terms_weighted_by_the_prompt_share():
    m = build()
    x = rand(B, T, D, seed=1)
    s, vv = logits_and_values(m, x, True)
    lse_p, lse_x = s[..., :N].logsumexp(-1), s[..., N:].logsumexp(-1)  # [B, H, T]
    lam = torch.sigmoid(lse_p - lse_x).transpose(1, 2)[..., None]  # Z_p / (Z_p + Z_x), [B, T, H, 1]
    o_x = torch.einsum("bhij,bjhd->bihd", s[..., N:].softmax(-1), vv[:, N:])
    q, _, _ = qkv(m, x)
    o_p, lse = prompt_term(q, m.prompt_k, m.prompt_v, HD**-0.5)
    torch.testing.assert_close(lse, lse_p.transpose(1, 2))
    o = (1 - lam) * o_x + lam * o_p
    torch.testing.assert_close(m(x), m.o_proj(o.reshape(B, T, D)))


def test_apt_adds_the_per_token_prompt_term_to_the_unchanged_token_attention():
    m = build("apt")
    with torch.no_grad():
        m.apt_log_z.copy_(torch.tensor([0.5, -1.0], dtype=F64))
    x = rand(B, T, D, seed=1)
    s, vv = logits_and_values(m, x, True)
    o_x = torch.einsum("bhij,bjhd->bihd", s[..., N:].softmax(-1), vv[:, N:])
    q, _, _ = qkv(m, x)
    o_p, lse_p = prompt_term(q, m.prompt_k, m.prompt_v, HD**-0.5)
    share = torch.sigmoid(lse_p - m.apt_log_z)[..., None]
    torch.testing.assert_close(m(x), m.o_proj((o_x + share * o_p).reshape(B, T, D)))
    # the prompt term of token i involves q_i only
    q2 = q.clone()
    q2[:, 4:] = torch.randn_like(q2[:, 4:])
    torch.testing.assert_close(prompt_term(q2, m.prompt_k, m.prompt_v, 0.3)[0][:, :4],
                               prompt_term(q, m.prompt_k, m.prompt_v, 0.3)[0][:, :4])


def test_apt_decodes_with_the_token_kv_cache():
    m = build("apt")
    x = rand(B, T, D, seed=2)
    y1, s = m(x[:, :5], return_state=True)
    y2 = m(x[:, 5:], state=s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), m(x))


def test_prompt_parameters_and_bad_arguments():
    m = build("apt")
    assert {id(p) for p in m.prompt_parameters()} == {id(m.prompt_k), id(m.prompt_v), id(m.apt_log_z)}
    assert len(build("exact").prompt_parameters()) == 2
    with pytest.raises(ValueError, match="mode"):
        attnzoo.build("prompt_tuning", d_model=D, mode="approx")
    with pytest.raises(ValueError, match="n_prompts"):
        attnzoo.build("prompt_tuning", d_model=D, n_prompts=0)
