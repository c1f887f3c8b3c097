"""Tasks: synthetic recall and in-context learning data, and a real byte-level corpus.

mqar (Zoology multi-query associative recall), passkey, icl_regression, ar_forecast, bytes
(stdlib source as a byte-level LM corpus). `token_task(name, ...)` gives the token tasks the
zoo and the trainer use: train/test (inputs, labels) with -100 where nothing is scored.
"""

from attnzoo.tasks.token_task import TOKEN_TASKS, TokenTask, token_task

__all__ = ["TOKEN_TASKS", "TokenTask", "token_task"]
