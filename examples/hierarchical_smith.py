"""SMITH-style two-level encoder on synthetic long documents.

A document is 8 sentence blocks of 12 tokens; its topic (one of 4) shows up as topic words in a
block with probability 0.5, the rest is noise. The encoder is pre-trained with SMITH's masked
sentence block loss, then a linear head on the document vector is trained for the topic.
Prints the pre-training loss before/after and the topic accuracy on held-out documents.

    python examples/hierarchical_smith.py [--small]
"""

import argparse

import torch

from _common import fit
from attnzoo.heads.hierarchical import HierarchicalEncoder


def docs(n, gen, N=8, L=12, V=64, n_topics=4):
    topic = torch.randint(0, n_topics, (n,), generator=gen)
    ids = torch.randint(n_topics * 4, V, (n, N, L), generator=gen)
    has = torch.rand(n, N, generator=gen) < 0.5
    words = topic[:, None, None] * 4 + torch.randint(0, 4, (n, N, 3), generator=gen)
    ids[..., :3] = torch.where(has[..., None], words, ids[..., :3])
    return ids, topic


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    a = p.parse_args(argv)
    pre, fine, batch, n_test = (5, 5, 8, 32) if a.small else (150, 200, 32, 256)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = HierarchicalEncoder(64, 32, block_layers=1, doc_layers=1, mixer_kwargs={"softmax": {"n_heads": 2}})
    losses = fit(m, lambda: docs(batch, gen), lambda ids, _: m.masked_block_loss(ids, generator=gen),
                 steps=pre, lr=2e-3, optimizer="adamw")
    head = torch.nn.Linear(32, 4)
    fit([*m.parameters(), *head.parameters()], lambda: docs(batch, gen),
        lambda ids, topic: torch.nn.functional.cross_entropy(head(m(ids)[0]), topic),
        steps=fine, lr=2e-3, optimizer="adamw")
    ids, topic = docs(n_test, gen)
    with torch.no_grad():
        acc = (head(m(ids)[0]).argmax(-1) == topic).float().mean().item()
    k = max(1, len(losses) // 10)
    print(f"SMITH masked-block loss {sum(losses[:k]) / k:.2f} -> {sum(losses[-k:]) / k:.2f}; "
          f"document topic accuracy {acc:.3f} (chance 0.25)")
    return acc


if __name__ == "__main__":
    main()
