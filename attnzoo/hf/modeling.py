"""AttnzooForCausalLM: a thin transformers `PreTrainedModel` around an attnzoo `LanguageModel`.

    import attnzoo.hf                                     # registers "attnzoo" with the Auto classes
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(dir)     # dir written by LanguageModel.save_pretrained
    out = model.generate(ids, max_new_tokens=32, do_sample=False)

`generate` decodes with the mixers' states: the prompt [B, T] runs once (prefill), then every new
token is one forward of [B, 1] that continues the states, which travel between steps as an
`AttnzooCache` (the per-layer mixer states and the count of tokens they have seen) under the
name the installed transformers uses for its cache (`cache` in 5.x, `past_key_values` before).
A 2D `attention_mask` (1 = real token, e.g. left padding) becomes the mixers' bool mask for the
tokens of each call. Greedy, sampled and beam-search decoding work (beam search reorders the states).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from attnzoo.hf.config import AttnzooConfig
from attnzoo.models.pretrained import build_from_config

# transformers 5.x calls the cache `cache`; 4.x `past_key_values`. Ask the output class which it is.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class AttnzooCache:
    """The mixers' decoding states between generate() steps.

    states: one mixer state per layer (what `LanguageModel.forward(..., return_state=True)` returns);
    seen_tokens: how many tokens of each sequence those states have consumed.
    """

    is_compileable = False  # read by transformers 5.x before it decides to torch.compile the decode step
    is_croppable = False    # the states of recurrent mixers cannot be rolled back by a token

    def __init__(self, states: list, seen_tokens: int):
        self.states = states
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: keep the states of the rows `beam_idx` (every state tensor is batch-first)."""
        self.states = [None if s is None else s.map(lambda t: t.index_select(0, beam_idx.to(t.device)))
                       for s in self.states]

    def __len__(self) -> int:
        return len(self.states)


class AttnzooForCausalLM(PreTrainedModel, GenerationMixin):
    """transformers view of `attnzoo.models.LanguageModel` (held as `.model`; its weights are `model.*`)."""

    config_class = AttnzooConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def __init__(self, config: AttnzooConfig):
        super().__init__(config)
        checked = config.attnzoo_config()
        if checked["attnzoo_class"] != "LanguageModel":
            raise ValueError("AttnzooForCausalLM wraps a LanguageModel; "
                             f"this config holds a {checked['attnzoo_class']}")
        self.model = build_from_config(checked, where=type(config).__name__)
        self.post_init()

    @classmethod
    def from_model(cls, lm) -> AttnzooForCausalLM:
        """Wrap an existing LanguageModel (its weights are shared, not copied)."""
        wrapper = cls(AttnzooConfig.from_model(lm))
        wrapper.model = lm
        return wrapper

    def _init_weights(self, module):
        """No-op: the LanguageModel and its mixers initialise themselves (each as its paper does)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the states are the cache: transformers must not create a key/value cache of its own

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                cache: AttnzooCache | None = None, past_key_values: AttnzooCache | None = None,
                use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                return_dict: bool | None = None, **unused):
        """input_ids [B, T] -> logits [B, T, vocab]; with use_cache, the states continued from `cache`.

        attention_mask [B, T_seen + T] (or [B, T]), 1 for real tokens. labels [B, T]: next-token
        cross-entropy (shifted here, -100 ignored). `unused` takes what generate() passes that a
        mixer stack has no use for (position ids, cache positions, output flags).
        """
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, AttnzooCache):
            raise ValueError(f"the cache of an attnzoo model must be an AttnzooCache, got {type(cache).__name__}")
        T = input_ids.shape[1]
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -T:].bool()
            mask = None if bool(mask.all()) else mask
        use_cache = self.config.use_cache if use_cache is None else use_cache
        new_cache = None
        if use_cache and self.model.causal:
            logits, states = self.model(input_ids, mask=mask, state=None if cache is None else cache.states,
                                        return_state=True, start=0 if cache is None else cache.seen_tokens)
            new_cache = AttnzooCache(states, (0 if cache is None else cache.seen_tokens) + T)
        else:
            logits = self.model(input_ids, mask=mask)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: new_cache})
        return out if return_dict is None or return_dict else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, cache=None, past_key_values=None, attention_mask=None,
                                      use_cache=True, **unused):
        """Feed only the tokens the states have not seen (after the prefill: the last one)."""
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            input_ids = input_ids[:, cache.seen_tokens:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, CACHE_FIELD: cache, "use_cache": use_cache}
