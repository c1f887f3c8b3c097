"""Graph breaks of every registered mixer's forward under torch.compile, counted by torch._dynamo.explain.

    python -m attnzoo.bench.graph_breaks            # rewrites attnzoo/bench/graph_breaks.json (~2 min, CPU)
    python -m attnzoo.bench.graph_breaks gla moh    # prints those mixers' counts, writes nothing

Conditions (CONDITIONS, recorded in the file): the card's example instance at d_model 32, x float32
[2, 12, 32] on the CPU, no mask, in three modes (MODES): "train" (the forward in training mode,
gradients enabled: what a training step compiles), "eval" (the forward in eval mode under
torch.no_grad: inference; some mixers take other paths there) and "decode" (eval, no_grad: one token
from the state of the 12-token forward, what generate() runs per token; mixers that decode only).
A graph break splits the forward into several graphs run one after the other with Python in
between (no fusion across it); `graphs` is their number (1: the whole forward is one graph).
The reference pages (bench/docs.py, `attnzoo card NAME`) show the recorded counts;
tests/conformance/test_compile.py compiles every mixer with inductor, checks it against eager and
holds the recorded graph count against the graphs it sees (same torch minor version).
"""

from __future__ import annotations

import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(__file__), "graph_breaks.json")
D_MODEL, BATCH, SEQ_LEN = 32, 2, 12
CONDITIONS = (f"the card's example instance, d_model {D_MODEL}, x float32 [{BATCH}, {SEQ_LEN}, {D_MODEL}] on the "
              "CPU, no mask")
MODES = {"train": "forward, training mode, gradients enabled", "eval": "forward, eval mode, torch.no_grad",
         "decode": f"one token after {SEQ_LEN} from their state, eval mode, torch.no_grad"}


def example_mixer(name: str, *, seed: int = 0):
    """The card's example instance at D_MODEL (training mode) and an input x [BATCH, SEQ_LEN, D_MODEL]."""
    import torch

    from attnzoo.registry import get_card, get_class

    torch.manual_seed(seed)
    m = get_class(name)(d_model=D_MODEL, **get_card(name).example_kwargs)
    return m, torch.randn(BATCH, SEQ_LEN, D_MODEL)


def _where(frame) -> str:
    path = frame.filename.replace(os.sep, "/")
    path = "attnzoo/" + path.split("/attnzoo/")[-1] if "/attnzoo/" in path else os.path.basename(path)
    return f"{path}:{frame.lineno}"


def count_graph_breaks(name: str, mode: str = "train") -> dict | None:
    """{"graphs", "graph_breaks", "reasons"} of mixer `name` in MODES[mode] (CONDITIONS); reasons are the
    distinct break reasons, each with the attnzoo line where it happened. None: "decode" of a mixer
    that does not decode."""
    import torch

    from attnzoo.registry import get_card

    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if mode == "decode" and not get_card(name).decode:
        return None
    m, x = example_mixer(name)
    m.train(mode == "train")
    torch._dynamo.reset()
    try:
        with torch.set_grad_enabled(mode == "train"):
            if mode == "decode":
                _, state = m(x, return_state=True)
                ex = torch._dynamo.explain(lambda t, s: m(t, state=s, return_state=True))(x[:, :1], state)
            else:
                ex = torch._dynamo.explain(m)(x)
    finally:
        torch._dynamo.reset()
    reasons = []
    for b in ex.break_reasons:
        text = str(b.reason).strip().splitlines()[0][:160]
        frames = [f for f in (b.user_stack or []) if "/attnzoo/" in f.filename.replace(os.sep, "/")]
        entry = f"{text} ({_where(frames[-1])})" if frames else text
        if entry not in reasons:
            reasons.append(entry)
    return {"graphs": int(ex.graph_count), "graph_breaks": int(ex.graph_break_count), "reasons": reasons}


def measure_all(names=None) -> dict:
    """The file's content: torch version, conditions and every mixer's counts."""
    import torch

    from attnzoo.registry import list_mixers

    torch.set_num_threads(1)
    mixers = {}
    for name in names or list_mixers():
        mixers[name] = {mode: count_graph_breaks(name, mode) for mode in MODES}
        print(name, ", ".join(f"{mode}: {r['graphs']} graph(s), {r['graph_breaks']} break(s)"
                              for mode, r in mixers[name].items() if r is not None), flush=True)
    return {"torch": torch.__version__.split("+")[0], "conditions": CONDITIONS, "modes": MODES, "mixers": mixers}


def load(path: str = RESULTS) -> dict:
    """The recorded counts ({} if the file is missing)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def recorded(name: str, path: str = RESULTS) -> dict | None:
    """Mixer `name`'s recorded counts ({mode: counts}) plus the torch version, conditions and modes,
    or None if not measured."""
    data = load(path)
    entry = data.get("mixers", {}).get(name)
    return None if entry is None else {**entry, "torch": data["torch"], "conditions": data["conditions"],
                                       "modes": data["modes"]}


def write(path: str = RESULTS) -> dict:
    data = measure_all()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return data


if __name__ == "__main__":
    if len(sys.argv) > 1:
        for n in sys.argv[1:]:
            print(n, json.dumps({mode: count_graph_breaks(n, mode) for mode in MODES}))
    else:
        write()
        print(f"written: {RESULTS}")
