from attnzoo.models.lm import LanguageModel, parse_pattern
from attnzoo.models.pretrained import load_pretrained

__all__ = ["LanguageModel", "load_pretrained", "parse_pattern"]
