"""The examples are scripts, not a package: put examples/ on sys.path (as `python examples/<name>.py`
does) so that their `from _common import ...` works, and load an example module from its file."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture
def load_example():
    """load_example(name) -> the module examples/<name>.py, freshly executed."""

    def load(name: str):
        path = EXAMPLES / f"{name}.py"
        if not path.is_file():
            raise ValueError(f"expected an example file {path}")
        spec = importlib.util.spec_from_file_location(f"example_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
