"""SwapMix on a synthetic object-set question task.

Each scene holds 6 objects (color one-hot, shape one-hot, noise); the question names a shape and
the answer is the color of the one object with that shape. In training scenes, the other objects
mostly share the answer's color (a context shortcut). An attention set model (question token +
objects through a bidirectional softmax encoder) is trained twice: plainly and with SwapMix
augmentation. Prints test accuracy on unbiased scenes and context reliance (how often a swap of
irrelevant objects flips the answer).

    python examples/swapmix_vqa.py [--small]
"""

import argparse

import torch

from _common import fit
from attnzoo.heads.swapmix import context_reliance, swapmix
from attnzoo.models.encoder import Encoder

C, S, NOISE, N = 4, 6, 6, 6
D_OBJ = C + S + NOISE


def scenes(n, gen, bias):
    shapes = torch.stack([torch.randperm(S, generator=gen)[:N] for _ in range(n)])
    q = torch.randint(0, N, (n,), generator=gen)
    answer = torch.randint(0, C, (n,), generator=gen)
    colors = torch.randint(0, C, (n, N), generator=gen)
    shortcut = torch.rand(n, N, generator=gen) < bias
    colors = torch.where(shortcut, answer[:, None], colors)
    rows = torch.arange(n)
    colors[rows, q] = answer
    obj = torch.cat([torch.nn.functional.one_hot(colors, C), torch.nn.functional.one_hot(shapes, S),
                     torch.randn(n, N, NOISE, generator=gen)], -1).float()
    qshape = shapes[rows, q]
    relevant = torch.zeros(n, N, dtype=torch.bool)
    relevant[rows, q] = True
    return obj, qshape, answer, relevant


ATTR = torch.tensor([i for i in range(D_OBJ) if not C <= i < C + S])  # color + noise: what a swap replaces
# (an irrelevant object keeps its shape, so a swap never creates a second object of the queried shape)


class SetQA(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.obj, self.q = torch.nn.Linear(D_OBJ, d), torch.nn.Embedding(S, d)
        self.enc = Encoder(d, 2, "softmax", mixer_kwargs={"softmax": {"n_heads": 2, "rope": False}})
        self.out = torch.nn.Linear(d, C)

    def forward(self, obj, qshape):
        h = torch.cat([self.q(qshape)[:, None], self.obj(obj)], 1)
        return self.out(self.enc(h)[:, 0])


def train(use_swapmix, steps, gen, bank):
    torch.manual_seed(0)
    model = SetQA()

    def sample():
        obj, qs, ans, rel = scenes(64, gen, bias=0.8)
        if use_swapmix:
            obj = swapmix(obj, rel, bank, p=0.5, dims=ATTR, generator=gen)
        return obj, qs, ans

    fit(model, sample, lambda obj, qs, ans: torch.nn.functional.cross_entropy(model(obj, qs), ans),
        steps=steps, lr=3e-3, optimizer="adamw")
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    a = p.parse_args(argv)
    steps, n_test = (10, 64) if a.small else (400, 1000)
    gen = torch.Generator().manual_seed(0)
    bank = scenes(500, gen, bias=0.0)[0].reshape(-1, D_OBJ)
    obj, qs, ans, rel = scenes(n_test, gen, bias=0.0)
    results = {}
    for name, use in (("plain", False), ("swapmix", True)):
        model = train(use, steps, gen, bank)
        with torch.no_grad():
            acc = (model(obj, qs).argmax(-1) == ans).float().mean().item()
        rel_frac = context_reliance(lambda o, m=model: m(o, qs).argmax(-1), obj, rel, bank, dims=ATTR, generator=gen)
        results[name] = (acc, rel_frac)
        print(f"{name:8s} training: unbiased test accuracy {acc:.3f}, context reliance {rel_frac:.3f}")
    return results


if __name__ == "__main__":
    main()
