import pytest
import torch

from attnzoo.models.in_context import InContextAttention


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def model(attention, H=3, d=5):
    torch.manual_seed(0)
    return InContextAttention(d, n_heads=H, attention=attention, init_std=0.5).double()


def test_linear_is_the_lsa_formula():
    # LSA (Zhou et al.): H + (1/n) P H M (Hᵀ Q H), prediction H[-1, -1]; one head, columns are tokens
    m = model("linear", H=1)
    z = rand(4, 8, 5)
    n = 7
    want = []
    for b in range(4):
        Hm = z[b].T                                   # [d, n+1]
        M = torch.diag(torch.cat([torch.ones(n), torch.zeros(1)])).double()
        out = Hm + (1 / n) * m.ov[0] @ Hm @ M @ (Hm.T @ m.kq[0] @ Hm)
        want.append(out[-1, -1] - Hm[-1, -1])
    torch.testing.assert_close(m(z), torch.stack(want))


def test_softmax_is_a_loop_over_heads_and_context():
    m = model("softmax")
    z = rand(3, 6, 5, seed=1)
    want = torch.zeros(3, dtype=torch.float64)
    for b in range(3):
        for h in range(3):
            s = torch.stack([z[b, j] @ m.kq[h] @ z[b, -1] for j in range(5)])
            w = s.softmax(0)
            want[b] += (m.ov[h] @ (w[:, None] * z[b, :5]).sum(0))[-1]
    torch.testing.assert_close(m(z), want)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_query_is_not_a_key_and_gradients_flow(attention):
    m = model(attention)
    z = rand(2, 6, 5, seed=2)
    z2 = z.clone()
    z2[:, -1, -1] = 7.0  # the query's target slot: the prediction reads the query only through KQ's last row
    m.kq.data[:, -1, :] = 0.0
    m.kq.data[:, :, -1] = 0.0
    torch.testing.assert_close(m(z), m(z2))
    m(z).sum().backward()
    assert m.kq.grad.abs().sum() > 0 and m.ov.grad.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match="attention must be one of"):
        InContextAttention(4, attention="relu")
    with pytest.raises(ValueError, match=r"z must be \[N, L\+1, 4\]"):
        InContextAttention(4)(torch.zeros(2, 3, 5))
