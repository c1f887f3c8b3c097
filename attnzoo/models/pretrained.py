"""save_pretrained / from_pretrained for attnzoo's models: a folder of config.json + model.safetensors.

    lm.save_pretrained("out/")                      # out/config.json, out/model.safetensors
    lm2 = LanguageModel.from_pretrained("out/")     # the same model, bit for bit
    model = load_pretrained("out/")                 # whichever model class the folder holds

config.json holds everything needed to rebuild the model (the constructor's arguments: vocabulary,
widths, the mixer pattern and each mixer's keyword arguments), the attnzoo version that wrote it and
a format version; model.safetensors holds the weights. Loading reads JSON and safetensors only (it
never unpickles), and checks the folder before trusting it: a newer format, another model class, an
unknown mixer, a missing or extra tensor, a tensor whose shape the config does not build, and a file
that is not safetensors each raise a ValueError naming the file (a missing file: FileNotFoundError).
Each file is written atomically (temporary file, fsync, rename, fsync of the folder), so a crash
leaves the previous file whole. The same folder loads in transformers through `attnzoo.hf`
(`"model_type": "attnzoo"`).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attnzoo.models.pattern import parse_pattern

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "attnzoo"
FORMAT_VERSION = 1
HF_ARCHITECTURES = {"LanguageModel": ["AttnzooForCausalLM"]}
HF_PREFIX = "model."  # the transformers wrapper holds the LanguageModel as `.model`


def pattern_to_json(mixer):
    """A mixer name or pattern (`"gla*3+softmax"` or `[("gla", 3), ("softmax", 1)]`) as a JSON value."""
    return mixer if isinstance(mixer, str) else [[str(n), int(c)] for n, c in mixer]


def init_config(**arguments) -> dict:
    """A model's constructor arguments as save_pretrained records them (a copy; the pattern as JSON)."""
    arguments = copy.deepcopy(arguments)
    arguments["mixer"] = pattern_to_json(arguments["mixer"])
    arguments["mixer_kwargs"] = arguments.get("mixer_kwargs") or {}
    return arguments


# The model classes a config can name, by class name: every PretrainedMixin subclass registers itself
# (attnzoo.models imports them all), so this file imports none of the model files that import it.
MODEL_CLASSES: dict[str, type] = {}


def _model_classes() -> dict:
    return MODEL_CLASSES


def _check_json(value, where: str):
    try:
        same = json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"{where} must be JSON values (numbers, strings, booleans, None, lists, dicts with string "
                         f"keys; no tuples) to be saved, got {value!r}")


def model_config(model) -> dict:
    """The config.json content for `model` (which recorded its constructor arguments as `init_config`)."""
    init = getattr(model, "init_config", None)
    if init is None:
        raise ValueError(f"{type(model).__name__} did not record its constructor arguments (init_config)")
    _check_json(init, f"the constructor arguments of {type(model).__name__}")
    config = {
        "model_type": MODEL_TYPE,
        "attnzoo_class": type(model).__name__,
        "attnzoo_format_version": FORMAT_VERSION,
        "attnzoo_version": _version(),
        "init": init,
    }
    if type(model).__name__ in HF_ARCHITECTURES:
        config["architectures"] = HF_ARCHITECTURES[type(model).__name__]
    layers = getattr(model, "layer_names", None)
    if layers is not None:
        config["layers"] = list(layers)  # informational: the pattern expanded, one name per layer
    return config


def _version() -> str:
    from attnzoo import __version__

    return __version__


def _fsync_dir(directory: str):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write):
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, rename it onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def save_pretrained(model, directory: str) -> str:
    """Write `directory`/config.json and `directory`/model.safetensors; returns the directory."""
    config = model_config(model)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "attnzoo_version": config["attnzoo_version"]}
    atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda p: save_file(tensors, p, metadata=metadata))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"

    def write_text(p):
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(os.path.join(directory, CONFIG_NAME), write_text)
    return directory


def read_config(directory: str) -> dict:
    """Read and check `directory`/config.json; returns it (a dict)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected a folder written by save_pretrained "
                                f"({CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return check_config(config, where=path)


def check_config(config: dict, *, where: str = CONFIG_NAME) -> dict:
    """Check a config dict (format version, model class, mixer names); returns it."""
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        got = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where} is not an attnzoo config: expected \"model_type\": \"{MODEL_TYPE}\", got {got!r}")
    version = config.get("attnzoo_format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: attnzoo_format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where} has attnzoo_format_version {version}, newer than the {FORMAT_VERSION} this attnzoo "
                         f"{_version()} reads (written by attnzoo {config.get('attnzoo_version')}): upgrade attnzoo")
    classes = _model_classes()
    if config.get("attnzoo_class") not in classes:
        raise ValueError(f"{where}: attnzoo_class must be one of {sorted(classes)}, "
                         f"got {config.get('attnzoo_class')!r}")
    init = config.get("init")
    if not isinstance(init, dict) or "mixer" not in init:
        raise ValueError(f"{where}: \"init\" must be a dict of constructor arguments with a \"mixer\", got {init!r}")
    try:
        parse_pattern(init["mixer"], int(init.get("n_layers", 1)))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad mixer pattern {init['mixer']!r}: {e}") from e
    return config


def build_from_config(config: dict, *, where: str = CONFIG_NAME):
    """A freshly initialised model of the class and constructor arguments a checked config names."""
    cls = _model_classes()[config["attnzoo_class"]]
    try:
        return cls(**config["init"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot build {cls.__name__} from its \"init\" arguments: {e}") from e


def read_weights(path: str, device="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected the weights beside {CONFIG_NAME}")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e


def load_weights(model, tensors: dict, *, where: str = WEIGHTS_NAME):
    """Load `tensors` into `model` exactly (dtype kept), after checking names and shapes."""
    expected = model.state_dict()
    if expected and not any(k in tensors for k in expected) and all(k.startswith(HF_PREFIX) for k in tensors):
        tensors = {k[len(HF_PREFIX):]: v for k, v in tensors.items()}  # saved by the transformers wrapper
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, config builds {tuple(v.shape)}"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
                 f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
                 f"shape mismatch {'; '.join(wrong[:5])}" if wrong else ""]
        raise ValueError(f"{where} does not match the model its config builds: {', '.join(p for p in parts if p)}")
    model.load_state_dict(tensors, strict=True, assign=True)  # assign: the saved tensors, their dtype included
    return model


def load_pretrained(directory: str, *, expect: type | None = None, device="cpu"):
    """Rebuild the model saved in `directory` (of class `expect` when given), in eval mode."""
    config = read_config(directory)
    where = os.path.join(directory, CONFIG_NAME)
    if expect is not None and config["attnzoo_class"] != expect.__name__:
        raise ValueError(f"{where} holds a {config['attnzoo_class']}, not a {expect.__name__}: "
                         f"use {config['attnzoo_class']}.from_pretrained or attnzoo.models.load_pretrained")
    model = build_from_config(config, where=where)
    weights = os.path.join(directory, WEIGHTS_NAME)
    load_weights(model, read_weights(weights, device), where=weights)
    return model.to(device).eval()


class PretrainedMixin:
    """Adds save_pretrained(dir) / from_pretrained(dir) to a model that records `self.init_config`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    def save_pretrained(self, directory: str) -> str:
        """Write config.json + model.safetensors into `directory` (created if needed)."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str, *, device: str | torch.device = "cpu"):
        """Rebuild a model saved by save_pretrained, weights bit for bit, in eval mode."""
        return load_pretrained(directory, expect=cls, device=device)
