"""Gated attention pooling for multiple-instance learning with view types (EchoPrime / RP-DNN shape).

A bag (a "study") holds up to 16 instances (videos), each with a view type; the bag is positive
iff it holds an instance of view 2 whose embedding carries the key pattern. Other views can carry
the pattern too but do not count, so the pool must use the type embeddings. Prints test accuracy
and the attention share on the key instance.

    python examples/attention_pool_mil.py [--small]
"""

import argparse

import torch

from _common import fit
from attnzoo.heads.attention_pool import AttentionPool


def bags(n, N, d, gen, key):
    h = torch.randn(n, N, d, generator=gen)
    types = torch.randint(0, 3, (n, N), generator=gen)
    y = torch.rand(n, generator=gen) < 0.5
    pos = torch.randint(0, N, (n,), generator=gen)
    decoy = (pos + 1 + torch.randint(0, N - 1, (n,), generator=gen)) % N
    rows = torch.arange(n)
    h[rows, decoy] += 3 * key  # the pattern on a non-key view: a decoy
    types[rows, decoy] = torch.where(types[rows, decoy] == 2, 0, types[rows, decoy])
    h[rows[y], pos[y]] += 3 * key
    types[rows[y], pos[y]] = 2
    types[rows[~y], pos[~y]] = torch.where(types[rows[~y], pos[~y]] == 2, 1, types[rows[~y], pos[~y]])
    return h, types, y.float(), pos


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    a = p.parse_args(argv)
    steps = 40 if a.small else 300
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    d, N = 16, 16
    key = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0) * 2
    pool = AttentionPool(d, hidden=32, gated=True, n_types=3)
    clf = torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))

    def loss_fn(h, types, y, _):
        out, _ = pool(h, types=types)
        return torch.nn.functional.binary_cross_entropy_with_logits(clf(out).squeeze(-1), y)

    fit([*pool.parameters(), *clf.parameters()], lambda: bags(64, N, d, gen, key), loss_fn,
        steps=steps, lr=3e-3, optimizer="adamw")
    h, types, y, pos = bags(1000, N, d, gen, key)
    with torch.no_grad():
        out, att = pool(h, types=types)
        acc = ((clf(out).squeeze(-1) > 0).float() == y).float().mean().item()
    share = att[y.bool()].gather(1, pos[y.bool()][:, None]).mean().item()
    print(f"gated attention MIL with view types: test accuracy {acc:.3f} (chance 0.5); "
          f"mean attention on the key instance in positive bags {share:.2f} (uniform {1 / N:.2f})")
    return acc


if __name__ == "__main__":
    main()
