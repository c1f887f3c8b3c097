"""One interface over the token tasks (MQAR, passkey, stdlib bytes) for the trainer and the zoo."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOKEN_TASKS = ("mqar", "passkey", "bytes")


@dataclass
class TokenTask:
    name: str
    vocab_size: int
    seq_len: int
    train: tuple[torch.Tensor, torch.Tensor]   # inputs [N, T] int64, labels [N, T] int64 (-100 = unscored)
    test: tuple[torch.Tensor, torch.Tensor]
    params: dict


def token_task(name: str, *, seq_len: int, num_train: int, num_test: int, seed: int = 0,
               num_pairs: int = 4, vocab_size: int = 8192, random_non_queries: bool = True) -> TokenTask:
    """Build a token task. num_pairs, vocab_size and random_non_queries are MQAR's (passkey and bytes
    use 256 bytes)."""
    if name == "mqar":
        from attnzoo.tasks.mqar import mqar_splits

        train, test = mqar_splits(seq_len=seq_len, num_pairs=num_pairs, vocab_size=vocab_size,
                                  num_train=num_train, num_test=num_test, seed=seed,
                                  random_non_queries=random_non_queries)
        return TokenTask(name, vocab_size, seq_len, train, test,
                         {"seq_len": seq_len, "num_pairs": num_pairs, "vocab_size": vocab_size})
    if name == "passkey":
        from attnzoo.tasks.passkey import generate_passkey

        train = generate_passkey(num_train, seq_len=seq_len, seed=2 * seed)
        test = generate_passkey(num_test, seq_len=seq_len, seed=2 * seed + 1)
        return TokenTask(name, 256, seq_len, train, test, {"seq_len": seq_len})
    if name == "bytes":
        from attnzoo.tasks.bytes import StdlibBytes

        corpus = StdlibBytes(max_bytes=4_000_000)
        train = corpus.windows("train", seq_len=seq_len, num=num_train, seed=2 * seed)
        test = corpus.windows("validation", seq_len=seq_len, num=num_test, seed=2 * seed + 1)
        return TokenTask(name, 256, seq_len, train, test, {"seq_len": seq_len})
    raise ValueError(f"task must be one of {TOKEN_TASKS}, got {name!r}")
