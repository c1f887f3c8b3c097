import torch

from attnzoo.distill.lora import apply_lora
from attnzoo.distill.stages import (
    AttentionTransferLoss, StageConfig, freeze_except, lm_finetune_loss, train_stage,
)
from attnzoo.distill.swap import linearize_lm
from attnzoo.models.lm import LanguageModel


def _teacher(q_scale: float = 1.0):
    """A tiny random softmax LM; q_scale < 1 smooths its attention (as a trained small model's mostly is)."""
    torch.manual_seed(0)
    lm = LanguageModel(vocab_size=32, d_model=32, n_layers=1, mixer="softmax", mixer_kwargs={"softmax": {"n_heads": 2}})
    with torch.no_grad():
        lm.blocks[0].mixer.q_proj.weight.mul_(q_scale)
    return lm


def _batch(step):
    g = torch.Generator().manual_seed(step % 4)
    x = torch.randint(0, 32, (2, 16), generator=g)
    # a learnable next-token rule: y = (x + 1) mod 32
    return x, (x + 1) % 32


def _transfer(teacher, student):
    pairs = [(t.mixer, s.mixer) for t, s in zip(teacher.blocks, student.blocks)]
    return AttentionTransferLoss(pairs, lambda b: teacher(b[0]))


def test_stage1_lowers_layerwise_mse_tenfold_and_trains_only_new_parameters():
    teacher = _teacher(q_scale=0.3)
    student, new = linearize_lm(teacher, "lawcat", overrides={"lawcat": {"feature_dim": 8}})
    freeze_except(student, new)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    transfer = _transfer(teacher, student)
    probe = [_batch(i) for i in range(4)]
    mse0 = transfer.mse(probe)
    train_stage(student, transfer, _batch, StageConfig(steps=80, lr=5e-2, warmup_steps=3))
    mse1 = transfer.mse(probe)
    assert mse1 < mse0 / 10, (mse0, mse1)
    for n, p in student.named_parameters():
        assert torch.equal(p, before[n]) == (n not in new), n


def test_stage2_with_lora_lowers_cross_entropy():
    teacher = _teacher()
    student, _ = linearize_lm(teacher, "gla")
    apply_lora(student)
    loss = lm_finetune_loss(student)
    ce0 = float(loss(_batch(0))[0].detach())
    train_stage(student, loss, _batch, StageConfig(steps=30, lr=3e-2, warmup_steps=2))
    ce1 = float(loss(_batch(0))[0].detach())
    assert ce1 < 0.9 * ce0, (ce0, ce1)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    def run(steps, folder):
        torch.manual_seed(3)
        teacher = _teacher()
        student, new = linearize_lm(teacher, "lawcat")
        freeze_except(student, new)
        cfg = StageConfig(steps=steps, lr=1e-2, warmup_steps=2, checkpoint_dir=folder, checkpoint_every=3)
        res = train_stage(student, _transfer(teacher, student), _batch, cfg)
        return student, res

    straight, _ = run(8, None)
    folder = str(tmp_path / "ck")
    cut = StageConfig(steps=8, lr=1e-2, warmup_steps=2, checkpoint_dir=folder, checkpoint_every=3)
    torch.manual_seed(3)
    teacher = _teacher()
    student, new = linearize_lm(teacher, "lawcat")
    freeze_except(student, new)

    class Stop(Exception):
        pass

    def stop_at(step, loss):
        if step == 4:
            raise Stop

    try:
        train_stage(student, _transfer(teacher, student), _batch, cut, on_step=stop_at)
    except Stop:
        pass
    resumed, res = run(8, folder)
    assert res.resumed_from == 3
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
