"""AttnzooConfig: the transformers config of an attnzoo model, read from attnzoo's own config.json.

The fields are those of `attnzoo.models.pretrained` (`attnzoo_class`, `attnzoo_format_version`,
`attnzoo_version`, `init` = the model's constructor arguments, `layers`), so one folder loads both
with `LanguageModel.from_pretrained(dir)` and with `AutoModelForCausalLM.from_pretrained(dir)`.
They default to None (transformers builds a config without arguments to find the non-default
values it writes); the model checks them when it is built, with `check_config`.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from attnzoo.models.pretrained import MODEL_TYPE, check_config


class AttnzooConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, init: dict | None = None, attnzoo_class: str | None = None,
                 attnzoo_format_version: int | None = None, attnzoo_version: str | None = None,
                 layers: list | None = None, use_cache: bool = True, **kwargs):
        self.init = init
        self.attnzoo_class = attnzoo_class
        self.attnzoo_format_version = attnzoo_format_version
        self.attnzoo_version = attnzoo_version
        self.layers = layers
        self.use_cache = use_cache  # generate() decodes on the mixers' states
        kwargs.setdefault("tie_word_embeddings", False)  # the LanguageModel ties its head itself (one tensor)
        kwargs.pop("vocab_size", None)  # derived from init, below
        super().__init__(**kwargs)
        self.vocab_size = (init or {}).get("vocab_size")  # read by some of transformers' generation code

    @classmethod
    def from_model(cls, model) -> AttnzooConfig:
        """The config of an attnzoo model object (e.g. a trained LanguageModel)."""
        from attnzoo.models.pretrained import model_config

        return cls(**model_config(model))

    def attnzoo_config(self) -> dict:
        """The attnzoo part of this config, checked (format version, class, mixer names)."""
        return check_config({"model_type": MODEL_TYPE, "attnzoo_class": self.attnzoo_class,
                             "attnzoo_format_version": self.attnzoo_format_version,
                             "attnzoo_version": self.attnzoo_version, "init": self.init},
                            where=f"{type(self).__name__}")
