import pytest
import torch
import torch.nn.functional as F

from attnzoo.distill.losses import (
    DistillWeights, attention_map_kl, attention_transfer, combined_loss, hidden_mse, logit_kd,
)


def test_logit_kd_is_temperature_scaled_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    tau = 3.0
    ref = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                   reduction="none").sum(-1).mean() * tau**2
    assert torch.allclose(logit_kd(s, t, temperature=tau), ref, atol=1e-6)
    assert float(logit_kd(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_masked_rows_do_not_count():
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    s2 = s.clone()
    s2[:, 2:] = 100.0
    assert torch.allclose(hidden_mse(s, t, mask=mask), hidden_mse(s2, t, mask=mask))
    assert torch.allclose(hidden_mse(s, t, mask=mask), (s - t)[:, :2].pow(2).mean())


def test_attention_transfer_averages_layers():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    assert float(attention_transfer([a, a], [a, 2 * b])) == pytest.approx(2.0)


def test_attention_map_kl_zero_on_equal_and_positive_otherwise():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    q = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    assert float(attention_map_kl(p, p)) == pytest.approx(0.0, abs=1e-6)
    ref = (p * (p.log() - q.log())).sum(-1).mean()
    assert float(attention_map_kl(q, p)) == pytest.approx(float(ref), rel=1e-4)


def test_combined_loss_weights_and_errors():
    torch.manual_seed(0)
    logits, t_logits = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    labels = torch.tensor([[1, -100, 2]])
    w = DistillWeights(ce=1.0, kd=0.5)
    total, parts = combined_loss(w, student_logits=logits, teacher_logits=t_logits, labels=labels)
    assert float(total) == pytest.approx(parts["ce"] + 0.5 * parts["kd"], rel=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        combined_loss(DistillWeights(ce=0.0))
    with pytest.raises(ValueError, match="differ in shape"):
        hidden_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="temperature"):
        logit_kd(logits, t_logits, temperature=0)
