from attnzoo.models.lm import LanguageModel, parse_pattern

__all__ = ["LanguageModel", "parse_pattern"]
