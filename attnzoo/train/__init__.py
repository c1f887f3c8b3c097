"""Training: the loop (trainer.py), LAMB (lamb.py), optimizer + schedule (optim.py), checkpoints
(checkpoint.py, no pickle: safetensors + JSON via state_codec.py), torchrun set-up (distributed.py)."""

from attnzoo.train.lamb import LAMB, lamb_param_groups
from attnzoo.train.trainer import TrainConfig, TrainResult, evaluate, train_lm

__all__ = ["LAMB", "TrainConfig", "TrainResult", "evaluate", "lamb_param_groups", "train_lm"]
