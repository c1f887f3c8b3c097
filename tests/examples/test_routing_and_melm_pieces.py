"""The environment pieces of examples/pointer_routing.py and examples/melm_mechanics.py."""

import math

import torch


def test_rollouts_serve_every_customer_once_with_the_only_possible_lengths(load_example):
    pr = load_example("pointer_routing")
    torch.manual_seed(0)
    policy = pr.RoutingPolicy(d_model=16, n_layers=1)
    xy = pr.instances(6, 2, torch.Generator().manual_seed(0))  # depot + 2 customers
    d = torch.cdist(xy, xy)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        one, lp1 = policy.rollout(xy, 1, samples=3, mode="sampling", generator=gen)
        two, lp2 = policy.rollout(xy, 2, samples=3, mode="sampling", generator=gen)
    perimeter = (d[:, 0, 1] + d[:, 1, 2] + d[:, 2, 0]).repeat_interleave(3)
    star = (2 * d[:, 0, 1] + 2 * d[:, 0, 2]).repeat_interleave(3)  # capacity 1 each: two out-and-backs
    assert torch.allclose(one, perimeter, atol=1e-5) and torch.allclose(two, star, atol=1e-5)
    assert (lp1 <= 0).all() and (lp2 <= 0).all()
    with torch.no_grad():  # larger instances: the rollout checks that all are served and home
        policy.rollout(pr.instances(4, 7, torch.Generator().manual_seed(2)), 3, samples=2, mode="sampling")


def test_nearest_neighbour_on_a_hand_case(load_example):
    pr = load_example("pointer_routing")
    xy = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])
    # one vehicle: (0,0) -> (1,0) [1] -> (3,0) [2 < sqrt5] -> (0,2) [sqrt13] -> depot [2]
    assert torch.allclose(pr.nearest_neighbour(xy, 1), torch.tensor([1 + 2 + math.sqrt(13) + 2]))
    # three vehicles of capacity 1: each goes out and back
    assert torch.allclose(pr.nearest_neighbour(xy, 3), torch.tensor([2.0 + 6.0 + 4.0]))


def test_melm_strings_split_and_errors(load_example):
    mm = load_example("melm_mechanics")
    pairs = torch.tensor([[100, 100], [400, 100]])
    prompts, answers = mm.strings(pairs, "F")
    assert prompts[0] == "F m=1.00 k=1.00 T=" and answers == ["06.28", "12.57"]
    prompts, answers = mm.strings(pairs, "I")
    assert prompts[1] == "I T=12.57 k=1.00 m=" and answers == ["1.00", "4.00"]
    gen = torch.Generator().manual_seed(0)
    train, test = mm.sample_pairs(500, gen, test=False), mm.sample_pairs(500, gen, test=True)
    assert not mm.is_test(train[:, 0], train[:, 1]).any() and mm.is_test(test[:, 0], test[:, 1]).all()
    errs = mm.relative_errors(["2.00", "x.1", "9.00"], ["1.00", "1.00", "10.00"])
    assert torch.allclose(errs, torch.tensor([1.0, 1.0, 0.1]))
    ids, mask = mm.batch(8, gen)
    assert ids.shape[0] == 8 and mask.shape == (8, ids.shape[1] - 1)
    assert bytes(ids[0][1:][mask[0]].tolist()).decode().endswith("\n")  # loss on the answer + newline only
