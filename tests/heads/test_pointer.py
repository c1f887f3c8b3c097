"""CAMP / Attention-Model pointer decoder: glimpse, clipped logits, masking, joint softmax, conflicts."""

import math

import pytest
import torch

from attnzoo.heads.pointer import (
    AgentCommunication,
    PointerDecoder,
    joint_log_softmax,
    resolve_conflicts,
    select_actions,
)


def r(*s, seed=0):
    return torch.randn(*s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def feasible_mask(B, m, N, seed=0):
    f = torch.rand(B, m, N, generator=torch.Generator().manual_seed(seed)) < 0.6
    f[..., 0] = True  # the depot is always feasible
    return f


def test_glimpse_equals_hand_computed_attention_on_a_tiny_case():
    dec = PointerDecoder(2, n_heads=1, tanh_clipping=None).double()
    with torch.no_grad():
        dec.q_proj.weight.copy_(torch.eye(2))
        dec.out_proj.weight.copy_(torch.eye(2))
        dec.node_proj.weight.copy_(torch.cat([torch.eye(2), torch.eye(2), torch.eye(2)]))
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]], dtype=torch.float64)  # [1, 3, 2]
    q = torch.tensor([[[2.0, 1.0]]], dtype=torch.float64)  # [1, 1, 2]
    feas = torch.tensor([[[True, True, False]]])
    # scores q·h/sqrt(2) over the two feasible nodes: 2/sqrt2, 2/sqrt2 -> equal weights 1/2 each
    g = dec.glimpse(q, dec.project_nodes(h), feas)
    assert torch.allclose(g, torch.tensor([[[0.5, 1.0]]], dtype=torch.float64))
    # u_i = g·h_i / sqrt(2): node 0: 0.5/sqrt2, node 1: 2/sqrt2, node 2 masked
    logits = dec(q, h, feasible=feas)
    expect = torch.tensor([[[0.5 / math.sqrt(2), 2 / math.sqrt(2), -math.inf]]], dtype=torch.float64)
    assert torch.allclose(logits[..., :2], expect[..., :2]) and logits[0, 0, 2] == -math.inf
    feas_all = torch.ones(1, 1, 3, dtype=torch.bool)
    w = torch.softmax(torch.tensor([2.0, 2.0, 9.0], dtype=torch.float64) / math.sqrt(2), 0)
    assert torch.allclose(dec.glimpse(q, dec.project_nodes(h), feas_all)[0, 0], w @ h[0])


def test_multi_head_glimpse_matches_per_head_loop():
    torch.manual_seed(0)
    dec = PointerDecoder(8, n_heads=2).double()
    h, q, feas = r(2, 5, 8), r(2, 3, 8, seed=1), feasible_mask(2, 3, 5)
    keys = dec.project_nodes(h)
    Q = dec.q_proj(q)
    heads = []
    for hh in range(2):
        sl = slice(4 * hh, 4 * hh + 4)
        s = Q[..., sl] @ keys.glimpse_k[:, 0, :, sl].transpose(1, 2) / 2.0
        a = torch.softmax(s.masked_fill(~feas, -math.inf), -1)
        heads.append(a @ keys.glimpse_v[:, 0, :, sl])
    assert torch.allclose(dec.glimpse(q, keys, feas), dec.out_proj(torch.cat(heads, -1)))


def test_logits_bounded_by_clipping_and_masked_to_minus_inf():
    torch.manual_seed(0)
    dec = PointerDecoder(16, n_heads=4, tanh_clipping=10.0).double()
    h, q, feas = r(3, 7, 16) * 50, r(3, 2, 16, seed=1) * 50, feasible_mask(3, 2, 7)
    logits = dec(q, h, feasible=feas)
    assert (logits[~feas] == -math.inf).all()
    assert logits[feas].abs().max() <= 10.0 and logits[feas].abs().max() > 9.0  # large inputs saturate
    unclipped = PointerDecoder(16, n_heads=4, tanh_clipping=None).double()
    unclipped.load_state_dict(dec.state_dict())
    u = unclipped(q, h, feasible=feas)
    assert u[feas].abs().max() > 10.0
    assert torch.allclose(logits[feas], 10.0 * torch.tanh(u[feas]))
    bias = r(3, 2, 7, seed=9)
    assert torch.allclose(unclipped(q, h, feasible=feas, score_bias=bias)[feas], (u + bias)[feas])
    assert torch.allclose(dec(q, h, feasible=feas, score_bias=bias)[feas], 10.0 * torch.tanh(u + bias)[feas])


def test_shared_nodes_equal_identical_per_agent_profiles_and_profiles_matter():
    torch.manual_seed(0)
    dec = PointerDecoder(8, n_heads=2).double()
    h, q, feas = r(2, 6, 8), r(2, 3, 8, seed=1), feasible_mask(2, 3, 6)
    shared = dec(q, h, feasible=feas)
    per_agent = dec(q, h[:, None].expand(2, 3, 6, 8), feasible=feas)
    assert torch.allclose(shared[feas], per_agent[feas])
    prof = h[:, None] + r(2, 3, 6, 8, seed=5)
    out = dec(q, prof, feasible=feas)
    for k in range(3):  # agent k sees only its own profiled nodes
        alone = dec(q[:, k:k + 1], prof[:, k], feasible=feas[:, k:k + 1])
        assert torch.allclose(out[:, k][feas[:, k]], alone[:, 0][feas[:, k]])


def test_joint_softmax_sums_to_one_over_feasible_pairs_and_masked_have_zero_probability():
    torch.manual_seed(0)
    dec = PointerDecoder(8, n_heads=2).double()
    feas = feasible_mask(4, 3, 6)
    logits = dec(r(4, 3, 8), r(4, 6, 8, seed=1), feasible=feas)
    P = joint_log_softmax(logits).exp()
    assert torch.allclose(P.sum((1, 2)), torch.ones(4, dtype=torch.float64))
    assert (P[~feas] == 0).all() and (P[feas] > 0).all()
    assert torch.allclose(P, torch.softmax(logits.flatten(1), -1).view_as(P))


def test_masked_choices_are_never_selected_and_log_probs_match_the_distribution():
    gen = torch.Generator().manual_seed(3)
    feas = feasible_mask(2, 3, 5, seed=4)
    logits = (r(2, 3, 5, seed=2) * 2).masked_fill(~feas, -math.inf)
    fallback = torch.zeros(2, 3, dtype=torch.long)
    shareable = torch.ones(2, 5, dtype=torch.bool)  # no conflicts: study the raw choices
    counts = torch.zeros(2, 3, 5, dtype=torch.float64)
    n = 4000
    for _ in range(n // 200):
        big = logits.repeat(200, 1, 1)
        acts = select_actions(big, fallback=fallback.repeat(200, 1), mode="sampling",
                              shareable=shareable.repeat(200, 1), generator=gen)
        assert feas.repeat(200, 1, 1).gather(2, acts.choice[..., None]).all()
        cond = torch.log_softmax(big, -1).gather(2, acts.choice[..., None]).squeeze(-1)
        assert torch.allclose(acts.choice_log_prob, cond) and torch.allclose(acts.log_prob, cond.sum(-1))
        joint = joint_log_softmax(big).exp().gather(2, acts.choice[..., None]).squeeze(-1)
        assert torch.allclose(acts.joint_prob, joint)
        counts += torch.nn.functional.one_hot(acts.choice, 5).view(200, 2, 3, 5).sum(0)
    freq = counts / n
    expect = torch.softmax(logits, -1)
    assert (freq[~feas] == 0).all()
    assert (freq - expect).abs().max() < 0.04  # ~4 standard errors at n = 4000
    greedy = select_actions(logits, fallback=fallback, mode="greedy", shareable=shareable[:2])
    assert torch.equal(greedy.choice, logits.argmax(-1))


def test_conflict_goes_to_the_higher_probability_agent_and_losers_fall_back():
    # three agents all prefer node 2; agent 1 has the highest logit there, so it keeps node 2
    logits = torch.tensor([[[0.0, -9.0, 3.0, -9.0],
                            [-9.0, -9.0, 5.0, -9.0],
                            [-9.0, 1.0, 2.0, -9.0]]])
    fallback = torch.tensor([[0, 0, 3]])
    acts = select_actions(logits, fallback=fallback, mode="greedy")
    assert acts.choice.tolist() == [[2, 2, 2]]
    assert acts.kept.tolist() == [[False, True, False]] and acts.action.tolist() == [[0, 2, 3]]
    # a shareable node (the depot) may be taken by several agents at once
    depot = torch.tensor([[True, False, False, False]])
    c, kept = resolve_conflicts(torch.tensor([[0, 0, 1]]), torch.tensor([[0.1, 0.2, 0.3]]),
                                torch.tensor([[3, 3, 3]]), depot)
    assert kept.all() and c.tolist() == [[0, 0, 1]]
    c, kept = resolve_conflicts(torch.tensor([[1, 1, 1]]), torch.tensor([[0.2, 0.2, 0.1]]),
                                torch.tensor([[5, 6, 7]]), None)
    assert kept.tolist() == [[True, False, False]] and c.tolist() == [[1, 6, 7]]  # tie: lower index


def test_random_conflicts_give_each_node_to_at_most_one_agent_the_most_probable():
    gen = torch.Generator().manual_seed(0)
    B, m, N = 64, 4, 3
    logits = torch.randn(B, m, N, generator=gen)
    fallback = torch.full((B, m), N - 1)
    shareable = torch.zeros(B, N, dtype=torch.bool)
    shareable[:, N - 1] = True
    acts = select_actions(logits, fallback=fallback, mode="sampling", shareable=shareable, generator=gen)
    assert (~acts.kept).any()
    for b in range(B):
        for node in range(N - 1):
            pickers = (acts.choice[b] == node).nonzero().flatten()
            holders = (acts.action[b] == node).nonzero().flatten()
            if len(pickers):
                assert len(holders) == 1
                assert acts.joint_prob[b, holders[0]] == acts.joint_prob[b, pickers].max()
            else:
                assert len(holders) == 0


def test_log_prob_gradient_reaches_the_decoder_and_the_communication_layer():
    torch.manual_seed(0)
    dec, comm = PointerDecoder(8, n_heads=2), AgentCommunication(8, n_heads=2)
    q = comm(torch.randn(2, 3, 8))
    feas = feasible_mask(2, 3, 5)
    acts = select_actions(dec(q, torch.randn(2, 5, 8), feasible=feas),
                          fallback=torch.zeros(2, 3, dtype=torch.long), mode="sampling")
    acts.log_prob.sum().backward()
    for p in [*dec.parameters(), *comm.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert dec.node_proj.weight.grad.abs().sum() > 0 and comm.block.mixer.q_proj.weight.grad.abs().sum() > 0


def test_communication_layer_is_permutation_equivariant_over_agents():
    torch.manual_seed(0)
    comm = AgentCommunication(8, n_heads=2).double()
    q = r(2, 4, 8)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(comm(q)[:, perm], comm(q[:, perm]))


def test_bad_inputs_raise_value_errors():
    dec = PointerDecoder(8, n_heads=2)
    q, h = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    feas = torch.ones(2, 3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        PointerDecoder(9, n_heads=2)
    with pytest.raises(ValueError, match="tanh_clipping"):
        PointerDecoder(8, tanh_clipping=0.0)
    with pytest.raises(ValueError, match="nodes must be"):
        dec(q, torch.randn(2, 5, 7), feasible=feas)
    with pytest.raises(ValueError, match="nodes must be"):
        dec(q, torch.randn(2, 2, 5, 8), feasible=feas)  # profiles for 2 agents, 3 queries
    with pytest.raises(ValueError, match="score_bias"):
        dec(q, h, feasible=feas, score_bias=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="query must be"):
        dec(torch.randn(2, 8), h, feasible=feas)
    with pytest.raises(ValueError, match="feasible must be"):
        dec(q, h, feasible=feas.float())
    with pytest.raises(ValueError, match="feasible must be"):
        dec(q, h, feasible=feas[:, :, :4])
    none = feas.clone()
    none[1, 2] = False
    with pytest.raises(ValueError, match="at least one feasible"):
        dec(q, h, feasible=none)
    logits = dec(q, h, feasible=feas)
    fb = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="mode"):
        select_actions(logits, fallback=fb, mode="beam")
    with pytest.raises(ValueError, match="fallback"):
        select_actions(logits, fallback=fb[:, :2])
    with pytest.raises(ValueError, match="fallback"):
        select_actions(logits, fallback=fb + 5)
    with pytest.raises(ValueError, match="shareable"):
        select_actions(logits, fallback=fb, shareable=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one feasible"):
        select_actions(logits.masked_fill(~none, -math.inf), fallback=fb)
