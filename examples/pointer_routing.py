"""Multi-vehicle routing with the CAMP pointer decoder, trained by REINFORCE, against nearest neighbour.

Problem: N customers and one depot (node 0), uniform in the unit square; m vehicles start at the
depot, each serves at most ceil(N/m) customers (m = 1 is the TSP), every customer is served once,
every vehicle ends at the depot; minimise the total Euclidean length of all tours.

Policy: an attnzoo Encoder (bidirectional softmax attention, no positions: the nodes are a set)
over node features (x, y, is_depot); per step, each vehicle's context [h_pos ; h_depot ; mean h ;
load] goes through CAMP's communication layer across vehicles and the pointer decoder
(attnzoo.heads.pointer), whose scores get a learned -w·distance(vehicle, node) bias (the decoder's
score_bias; turn it off with --no-distance-bias: the model must then learn distances from the
embeddings alone, which takes far more than this example's budget: +29.6% over nearest neighbour
after 100 steps, vs -3.2% with the bias). All vehicles move in parallel; when two pick the same
customer the more probable one gets it and the other stays where it is. A vehicle may go back
to the depot (and finish) only when full or when no customer is left.

Training: REINFORCE with a per-instance baseline: S sampled rollouts per instance, advantage
= length - mean length of the S rollouts (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE
samples, get a baseline for free!"), a batch mean taken over each instance's own samples.
Evaluation: greedy decoding on held-out instances vs the sequential nearest-neighbour heuristic
(each vehicle in turn goes to the nearest unserved customer until full, then home).

Measured (2-core CPU shared with other jobs), default 200 steps, 512 held-out instances of 20
customers, greedy vs nearest neighbour: 1 vehicle 4.214 vs 4.621 (-8.8%, 72 s), 2 vehicles
5.175 vs 5.402 (-4.2%, 98 s at load ~6), 3 vehicles 6.377 vs 6.380 (-0.1%, 69 s).

    python examples/pointer_routing.py [--small] [--vehicles 2] [--customers 20] [--steps 200]
"""

import argparse
import math
import time

import torch
from torch import nn

from _common import cpu_threads, fit
from attnzoo.heads.pointer import AgentCommunication, PointerDecoder, select_actions
from attnzoo.models.encoder import Encoder


def instances(n, n_customers, gen):
    return torch.rand(n, n_customers + 1, 2, generator=gen)  # node 0 is the depot


def tour_step_length(xy, a, b):
    """xy [R, N+1, 2], a, b [R, m] node indices -> [R, m] distances."""
    pa = torch.gather(xy, 1, a[..., None].expand(-1, -1, 2))
    pb = torch.gather(xy, 1, b[..., None].expand(-1, -1, 2))
    return (pa - pb).norm(dim=-1)


class RoutingPolicy(nn.Module):
    def __init__(self, d_model=32, n_layers=2, n_heads=4, distance_bias=True):
        super().__init__()
        self.distance_bias = distance_bias
        self.embed = nn.Linear(3, d_model)
        self.encoder = Encoder(d_model, n_layers, "softmax", mlp_ratio=2.0,
                               mixer_kwargs={"softmax": {"n_heads": n_heads, "rope": False}})
        self.context = nn.Linear(3 * d_model + 1, d_model)
        self.comm = AgentCommunication(d_model, n_heads=n_heads)
        self.pointer = PointerDecoder(d_model, n_heads=n_heads, tanh_clipping=10.0)
        self.distance_weight = nn.Parameter(torch.tensor(2.0))  # score_bias = -softplus(w) * distance

    def rollout(self, xy, n_vehicles, *, samples=1, mode="greedy", generator=None):
        """xy [B, N+1, 2] -> (total length [B*samples], log-prob [B*samples]); rows are instance-major."""
        B, n_nodes, _ = xy.shape
        m, cap = n_vehicles, math.ceil((n_nodes - 1) / n_vehicles)
        feats = torch.cat([xy, torch.zeros(B, n_nodes, 1)], -1)
        feats[:, 0, 2] = 1.0
        h = self.encoder(self.embed(feats))
        h, xy = h.repeat_interleave(samples, 0), xy.repeat_interleave(samples, 0)
        R = h.shape[0]
        keys = self.pointer.project_nodes(h)
        fixed = torch.cat([h[:, :1].expand(R, m, -1), h.mean(1, keepdim=True).expand(R, m, -1)], -1)
        pos = torch.zeros(R, m, dtype=torch.long)
        load = torch.zeros(R, m)
        done = torch.zeros(R, m, dtype=torch.bool)
        visited = torch.zeros(R, n_nodes, dtype=torch.bool)
        visited[:, 0] = True
        depot_only = torch.zeros(R, n_nodes, dtype=torch.bool)
        depot_only[:, 0] = True
        length, logp = torch.zeros(R), torch.zeros(R)
        for _ in range(n_nodes * m + m + 1):
            if bool(done.all()):
                break
            left = ~visited.all(1, keepdim=True)  # [R, 1] any customer left
            open_ = ~done & (load < cap)
            feasible = (~visited[:, None, :] & open_[..., None]).clone()
            feasible[..., 0] = done | (load >= cap) | ~left
            h_pos = torch.gather(h, 1, pos[..., None].expand(-1, -1, h.shape[-1]))
            q = self.comm(self.context(torch.cat([h_pos, fixed, (load / cap)[..., None]], -1)))
            bias = None
            if self.distance_bias:
                here = torch.gather(xy, 1, pos[..., None].expand(-1, -1, 2))  # [R, m, 2]
                bias = -nn.functional.softplus(self.distance_weight) * torch.cdist(here, xy)
            logits = self.pointer(q, keys, feasible=feasible, score_bias=bias)
            acts = select_actions(logits, fallback=pos, mode=mode, shareable=depot_only, generator=generator)
            length = length + tour_step_length(xy, pos, acts.action).sum(-1)
            logp = logp + acts.log_prob
            served = acts.action > 0
            visited = visited.scatter(1, acts.action, served | visited.gather(1, acts.action))
            load = load + (served & (acts.action != pos)).float()
            done = done | (acts.choice == 0)  # the depot is shareable: picking it always succeeds
            pos = acts.action
        if not (bool(visited.all()) and bool(done.all())):
            raise RuntimeError("rollout ended with unserved customers or vehicles away from the depot")
        return length, logp


def nearest_neighbour(xy, n_vehicles):
    """Sequential nearest neighbour: each vehicle in turn serves its nearest unserved customers until full."""
    B, n_nodes, _ = xy.shape
    cap = math.ceil((n_nodes - 1) / n_vehicles)
    d = torch.cdist(xy, xy)
    visited = torch.zeros(B, n_nodes, dtype=torch.bool)
    visited[:, 0] = True
    rows, total = torch.arange(B), torch.zeros(B)
    for _ in range(n_vehicles):
        pos = torch.zeros(B, dtype=torch.long)
        for _ in range(cap):
            left = ~visited.all(1)
            nxt = d[rows, pos].masked_fill(visited, math.inf).argmin(1)
            nxt = torch.where(left, nxt, pos)
            total += d[rows, pos, nxt]
            visited[rows, nxt] = True
            pos = nxt
        total += d[rows, pos, 0]
    return total


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    p.add_argument("--vehicles", type=int, default=2)
    p.add_argument("--customers", type=int, default=20)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=32, help="instances per step")
    p.add_argument("--samples", type=int, default=8, help="rollouts per instance (baseline = their mean)")
    p.add_argument("--no-distance-bias", action="store_true", help="pointer scores without the distance bias")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small ops: 1 is fastest)")
    a = p.parse_args(argv)
    with cpu_threads(a.threads):
        return run(a)


def run(a):
    if a.vehicles < 1 or a.customers < a.vehicles:
        raise ValueError(f"need 1 <= vehicles <= customers, got {a.vehicles} vehicles, {a.customers} customers")
    N = 8 if a.small else a.customers
    steps = a.steps if a.steps is not None else (5 if a.small else 200)
    batch, n_test = (8, 64) if a.small else (a.batch, 512)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    policy = RoutingPolicy(distance_bias=not a.no_distance_bias)
    test = instances(n_test, N, torch.Generator().manual_seed(123))
    with torch.no_grad():
        before = policy.rollout(test, a.vehicles)[0].mean().item()
    t0 = time.perf_counter()

    def reinforce_loss(xy):
        length, logp = policy.rollout(xy, a.vehicles, samples=a.samples, mode="sampling", generator=gen)
        adv = length.view(batch, a.samples)
        adv = (adv - adv.mean(1, keepdim=True)).flatten()
        return (adv.detach() * logp).mean()

    fit(policy, lambda: instances(batch, N, gen), reinforce_loss, steps=steps, lr=1e-3, clip_norm=1.0)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        model = policy.rollout(test, a.vehicles)[0].mean().item()
    nn_len = nearest_neighbour(test, a.vehicles).mean().item()
    gap = (model - nn_len) / nn_len
    print(f"routing, {N} customers, {a.vehicles} vehicle(s), {n_test} held-out instances: pointer (greedy) "
          f"mean tour length {model:.3f} (untrained {before:.3f}) vs nearest neighbour {nn_len:.3f}; "
          f"gap {100 * gap:+.1f}% ({steps} REINFORCE steps x {batch}x{a.samples} rollouts, {train_s:.0f} s)")
    return {"model": model, "nearest_neighbour": nn_len, "gap": gap, "untrained": before}


if __name__ == "__main__":
    main()
