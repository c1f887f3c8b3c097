"""attnzoo models in Hugging Face transformers (the optional extra: `pip install "attnzoo[hf]"`).

    import attnzoo.hf                       # registers model_type "attnzoo" with AutoConfig / AutoModelForCausalLM
    lm.save_pretrained("out/")              # an attnzoo LanguageModel
    model = AutoModelForCausalLM.from_pretrained("out/")
    model.generate(ids, max_new_tokens=16)  # prefill once, then one T=1 step per token on the mixers' states
"""

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('attnzoo.hf needs transformers: pip install "attnzoo[hf]"') from e

from transformers import AutoConfig, AutoModelForCausalLM

from attnzoo.hf.config import AttnzooConfig
from attnzoo.hf.modeling import AttnzooCache, AttnzooForCausalLM
from attnzoo.models.pretrained import MODEL_TYPE

AutoConfig.register(MODEL_TYPE, AttnzooConfig, exist_ok=True)
AutoModelForCausalLM.register(AttnzooConfig, AttnzooForCausalLM, exist_ok=True)

__all__ = ["AttnzooCache", "AttnzooConfig", "AttnzooForCausalLM"]
