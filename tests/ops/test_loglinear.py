"""Log-linear attention (arXiv:2506.04761): the token loop against the paper's masked form (O = (A ⊙ M^S ⊙
M^H) V), the chunked torch path against the loop (outputs, level states, gradients; masks, states carried
from any count, the capped top level, chunk sizes), the Fenwick facts, and the base models as the case of
equal level weights."""

import doctest

import pytest
import torch

from attnzoo.ops.delta import delta_rule
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.ops.loglinear import LevelState, log_linear_attention
from attnzoo.ops.loglinear import api as loglinear_api
from attnzoo.ops.loglinear.fenwick import bucket_representatives, capped_bit_length
from attnzoo.ops.loglinear.reference import fenwick_levels, log_linear_masked

F64 = torch.float64


def _inputs(B=2, T=13, H=2, K=4, V=3, L=6, seed=0, strength=1.0, delta=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    q, v = r(B, T, H, K), r(B, T, H, V)
    k = torch.nn.functional.normalize(r(B, T, H, K), dim=-1)
    g = -torch.rand(B, T, H, generator=gen, dtype=F64) * strength
    lam = torch.rand(B, T, H, L, generator=gen, dtype=F64) * 2
    beta = torch.rand(B, T, H, generator=gen, dtype=F64) if delta else None
    return q, k, v, g, lam, beta


def _mask(B, T, seed=1):
    m = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) > 0.3
    m[:, 0] = True
    return m


def _state(B, H, K, V, L, counts, seed=2):
    """A LevelState of the right shape for `counts` (random matrices in the occupied levels, zeros elsewhere)."""
    lv = min(L - 1, max(counts).bit_length())
    S = torch.randn(B, H, lv, K, V, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for b, n in enumerate(counts):
        for i in range(lv):
            occupied = (n >> i) & 1 if i < L - 2 else n >= (1 << (L - 2))
            if not occupied:
                S[b, :, i] = 0
    return LevelState(S, torch.tensor(counts))


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("T", [1, 9, 20])
def test_the_loop_is_the_papers_masked_form(delta, T):
    q, k, v, g, lam, beta = _inputs(T=T, delta=delta)
    mask = _mask(2, T)
    for m in (None, mask):
        o, _ = log_linear_attention(q, k, v, g, lam, beta, mask=m, impl="reference")
        torch.testing.assert_close(o, log_linear_masked(q, k, v, g, lam, beta, mask=m), rtol=1e-12, atol=1e-12)


def test_fenwick_levels():
    # query 6 = 0b110 sees {6} at level 0, [4, 6) at level 2, [0, 4) at level 3
    lv = fenwick_levels(torch.arange(8)[None], 10)[0]
    assert lv[6, :7].tolist() == [3, 3, 3, 3, 2, 2, 0]
    assert lv[7, :8].tolist() == [3, 3, 3, 3, 2, 2, 1, 0]
    assert capped_bit_length(torch.tensor([0, 1, 5, 1000]), 4).tolist() == [0, 1, 3, 3]
    # after 13 = 0b1101 tokens: level 1 [12, 13), (level 2 empty), level 3 [8, 12), level 4 [0, 8);
    # with 4 levels the top one (3) holds [0, 12) and stands in as position 0
    assert bucket_representatives(torch.tensor([13]), 4, 10).tolist() == [[12, 12, 8, 0]]
    assert bucket_representatives(torch.tensor([13]), 3, 4).tolist() == [[12, 12, 0]]


def _grads(fn, tensors, seed=5):
    ins = [t.detach().clone().requires_grad_(True) for t in tensors]
    o, s = fn(*ins)
    gen = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=F64)).sum()
    if s is not None:
        loss = loss + (s.S * torch.randn(s.S.shape, generator=gen, dtype=F64)).sum()
    return [o, None if s is None else s.S, *torch.autograd.grad(loss, ins)]


def _op(impl, beta_given, mask=None, state=None, chunk_size=4):
    def fn(q, k, v, g, lam, *rest):
        beta = rest[0] if beta_given else None
        S = rest[-1] if state is not None else None
        st = None if state is None else LevelState(S, state.count)
        return log_linear_attention(q, k, v, g, lam, beta, mask=mask, initial_state=st, output_final_state=True,
                                    impl=impl, chunk_size=chunk_size)
    return fn


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("case", ["plain", "mask", "state", "state+mask", "capped"])
def test_chunked_matches_the_loop_forward_state_and_gradients(delta, case):
    L = 3 if case == "capped" else 6
    T = 19
    q, k, v, g, lam, beta = _inputs(T=T, delta=delta, L=L, strength=2.0)
    mask = _mask(2, T) if "mask" in case else None
    state = _state(2, 2, 4, 3, L, [5, 22]) if "state" in case else None
    ins = [q, k, v, g, lam] + ([beta] if delta else []) + ([state.S] if state is not None else [])
    got = _grads(_op("torch", delta, mask, state), ins)
    want = _grads(_op("reference", delta, mask, state), ins)
    if state is not None:   # an empty level's matrix is structurally zero: its gradient means nothing
        occupied = state.S != 0
        got[-1], want[-1] = got[-1] * occupied, want[-1] * occupied
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda s, i=i: f"item {i}: {s}")


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunk_sizes_and_state_continuation(chunk_size):
    q, k, v, g, lam, beta = _inputs(T=30, delta=True, L=5)
    full, s_full = log_linear_attention(q, k, v, g, lam, beta, output_final_state=True, chunk_size=chunk_size)
    parts, s = [], None
    for a, b in ((0, 11), (11, 12), (12, 30)):
        sl = [t[:, a:b] for t in (q, k, v, g, lam, beta)]
        o, s = log_linear_attention(*sl, initial_state=s, output_final_state=True, chunk_size=chunk_size)
        parts.append(o)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(s.S, s_full.S, rtol=1e-11, atol=1e-11)
    assert s.count.tolist() == [30, 30] and s.S.shape[2] == 4        # min(L - 1, bit_length(30)) levels


@pytest.mark.parametrize("delta", [False, True])
def test_equal_level_weights_give_the_base_model(delta):
    q, k, v, g, lam, beta = _inputs(T=21, delta=delta)
    o, s = log_linear_attention(q, k, v, g, torch.ones_like(lam), beta, output_final_state=True)
    if delta:
        o2, S2 = delta_rule(q, k, v, beta, g, output_final_state=True, impl="reference")
    else:
        o2, S2 = gated_linear_attention(q, k, v, g, scale=4 ** -0.5, output_final_state=True, impl="reference")
    torch.testing.assert_close(o, o2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.S.sum(2), S2, rtol=1e-10, atol=1e-10)   # the levels sum to the base state


def test_level_weights_act_on_their_levels_only():
    q, k, v, g, lam, _ = _inputs(T=12, L=6)
    o = log_linear_attention(q, k, v, g, lam)[0]
    # query 11 = 0b1011 sees levels 0 ({11}), 1 ([10, 11)), 2 ([8, 10)) and 4 ([0, 8)); it has no level 3
    lam3 = lam.clone()
    lam3[:, 11, :, 3] += 5.0
    torch.testing.assert_close(log_linear_attention(q, k, v, g, lam3)[0], o, rtol=1e-13, atol=1e-13)
    lam4 = lam.clone()
    lam4[:, 11, :, 4] += 5.0
    o4 = log_linear_attention(q, k, v, g, lam4)[0]
    torch.testing.assert_close(o4[:, :11], o[:, :11], rtol=1e-13, atol=1e-13)
    assert (o4[:, 11] - o[:, 11]).abs().max() > 1e-3


def test_float32_and_bfloat16_inputs():
    q, k, v, g, lam, beta = _inputs(T=37, delta=True)
    want = log_linear_attention(q, k, v, g, lam, beta, impl="reference")[0]
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        o, s = log_linear_attention(*(t.to(dtype) for t in (q, k, v, g, lam, beta)), output_final_state=True)
        assert o.dtype == dtype and s.S.dtype == torch.float32
        assert ((o.double() - want).abs().max() / want.abs().max()).item() < tol


def test_bad_inputs_are_refused():
    q, k, v, g, lam, beta = _inputs()
    with pytest.raises(ValueError, match="g must be"):
        log_linear_attention(q, k, v, g[..., None], lam)
    with pytest.raises(ValueError, match="level_weights"):
        log_linear_attention(q, k, v, g, lam[..., :1])
    with pytest.raises(ValueError, match="beta"):
        log_linear_attention(q, k, v, g, lam, g[..., None])
    with pytest.raises(ValueError, match="mask"):
        log_linear_attention(q, k, v, g, lam, mask=torch.ones(2, 13))
    with pytest.raises(ValueError, match="initial_state.S"):
        log_linear_attention(q, k, v, g, lam, initial_state=LevelState(torch.zeros(2, 2, 9, 4, 3), torch.ones(2)))
    with pytest.raises(ValueError, match="initial_state must be"):
        log_linear_attention(q, k, v, g, lam, initial_state=torch.zeros(2, 2, 4, 3))
    with pytest.raises(ValueError, match="impl"):
        log_linear_attention(q, k, v, g, lam, impl="triton")
    with pytest.raises(ValueError, match="chunk_size"):
        log_linear_attention(q, k, v, g, lam, chunk_size=0)


def test_docstring_example_runs():
    torch.manual_seed(0)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(loglinear_api.log_linear_attention, globs={"torch": torch,
                            "log_linear_attention": log_linear_attention}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
