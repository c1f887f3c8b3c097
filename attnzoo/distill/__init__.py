"""Linearization and distillation: turn a trained softmax model into any registered mixer.

LoLCATs (Zhang et al. 2024, arXiv:2410.10254) / LAWCAT (Liu et al. 2025, arXiv:2509.18467):
swap each attention layer for a student mixer initialised from its q/k/v/o (swap.py), train the
new parameters on the layer-wise output MSE (stage 1, stages.py), then fine-tune with LoRA
(lora.py) or fully (stage 2). Losses (losses.py): logit KD, hidden-state MSE, attention transfer,
attention-map KL. Experiments: byte_lm.py (our causal byte-LM teacher) and minilm.py
(all-MiniLM-L6-v2 through the Hugging Face adapter, hf_adapter.py). CLI: `attnzoo linearize`.
"""

from attnzoo.distill.lora import LoRALinear, apply_lora, merge_lora
from attnzoo.distill.losses import (
    DistillWeights, attention_map_kl, attention_transfer, combined_loss, hidden_mse, logit_kd,
)
from attnzoo.distill.stages import AttentionTransferLoss, StageConfig, freeze_except, lm_finetune_loss, train_stage
from attnzoo.distill.swap import copy_projections, linearize_encoder, linearize_lm

__all__ = [
    "AttentionTransferLoss", "DistillWeights", "LoRALinear", "StageConfig", "apply_lora", "attention_map_kl",
    "attention_transfer", "combined_loss", "copy_projections", "freeze_except", "hidden_mse", "linearize_encoder",
    "linearize_lm", "lm_finetune_loss", "logit_kd", "merge_lora", "train_stage",
]
