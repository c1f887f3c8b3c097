import operator

import pytest

from attnzoo.repro._lm import run_tasks


@pytest.mark.parametrize("workers", [1, 2])
def test_run_tasks_keeps_task_order_and_reports_each_finished_task(workers):
    seen = []
    out = run_tasks(operator.neg, [3, 1, 4, 1, 5], workers=workers, on_done=lambda i, r: seen.append((i, r)))
    assert out == [-3, -1, -4, -1, -5]
    assert sorted(seen) == [(0, -3), (1, -1), (2, -4), (3, -1), (4, -5)]


def test_run_tasks_raises_a_workers_error():
    with pytest.raises(TypeError):
        run_tasks(operator.neg, ["a", "b"], workers=2)
