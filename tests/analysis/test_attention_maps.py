import pytest
import torch

from attnzoo.analysis.attention_maps import (
    first_token_share,
    lm_attention_probs,
    trace_blocks,
    uniform_first_token_share,
)
from attnzoo.analysis.prefix_mass import attention_probs
from attnzoo.models import LanguageModel


def lm(mixer="softmax,gla", **kw):
    torch.manual_seed(0)
    return LanguageModel(40, 16, 2, mixer=mixer, mlp_ratio=2.0, **kw).double()


def test_trace_blocks_gives_each_mixer_input_and_block_output():
    m = lm()
    ids = torch.randint(0, 40, (2, 9))
    inputs, outputs = trace_blocks(m, ids)
    x = m.embed(ids)
    for i, block in enumerate(m.blocks):
        torch.testing.assert_close(inputs[i], block.norm1(x))
        x, _ = block(x)
        torch.testing.assert_close(outputs[i], x)
    assert m.training  # mode restored
    assert all(not b.mixer._forward_pre_hooks and not b._forward_hooks for b in m.blocks)  # hooks removed


def test_lm_attention_probs_per_layer():
    m = lm("softmax,gla")
    ids = torch.randint(0, 40, (2, 9))
    maps = lm_attention_probs(m, ids)
    assert maps[1] is None and maps[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 9, dtype=maps[0].dtype))
    assert float(maps[0].triu(1).abs().max()) == 0.0  # causal
    want = attention_probs(m.blocks[0].mixer, m.blocks[0].norm1(m.embed(ids)))
    torch.testing.assert_close(maps[0], want)
    with pytest.raises(ValueError, match="LanguageModel"):
        trace_blocks(torch.nn.Linear(2, 2), ids)


def test_first_token_share_and_its_uniform_reference():
    T = 6
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    probs = uniform.expand(2, 3, T, T)
    assert first_token_share(probs) == pytest.approx(uniform_first_token_share(T))
    assert uniform_first_token_share(3) == pytest.approx((1 / 2 + 1 / 3) / 2)
    sink = torch.zeros(1, 1, T, T)
    sink[..., 0] = 1.0
    assert first_token_share(sink) == 1.0
    with pytest.raises(ValueError, match=r"\[B, H, T, T\]"):
        first_token_share(torch.ones(2, 3, 4))


def test_source_output_share_splits_the_output():
    import attnzoo
    from attnzoo.analysis.attention_maps import source_output_share

    torch.manual_seed(0)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    sm = attnzoo.build("softmax", d_model=16, n_heads=4).double()
    share = source_output_share(sm, x, 4)
    assert share.shape == (10,) and bool(((share >= 0) & (share <= 1)).all())
    assert share[:4].min() == 1.0  # queries inside the source see only the source
    # a reference from the definition: W_o Σ_{j<P} p v vs W_o Σ_{j>=P} p v (no bias, no other branch)
    p = attention_probs(sm, x)
    v = sm.v_proj(x).view(2, 10, 4, 4)
    a = sm.o_proj(torch.einsum("bhij,bjhd->bihd", p[..., :4], v[:, :4]).reshape(2, 10, 16)).norm(dim=-1)
    b = sm.o_proj(torch.einsum("bhij,bjhd->bihd", p[..., 4:], v[:, 4:]).reshape(2, 10, 16)).norm(dim=-1)
    torch.testing.assert_close(share, (a / (a + b)).mean(0))
    palm = attnzoo.build("partial_attention", d_model=16, n_heads=4, prefix_len=4).double()
    with_branch = source_output_share(palm, x, 4)
    torch.nn.init.zeros_(palm.partial_o.weight)  # without its source-only branch: a smaller source share
    assert bool((source_output_share(palm, x, 4)[4:] < with_branch[4:]).all())
    gated = attnzoo.build("gated_softmax", d_model=16, n_heads=4)
    with pytest.raises(ValueError, match="gates its attention output"):
        source_output_share(gated, x.float(), 4)
