from attnzoo.models.encoder import Encoder
from attnzoo.models.lm import LanguageModel, parse_pattern
from attnzoo.models.pretrained import load_pretrained
from attnzoo.models.sequence_classifier import SequenceClassifier

__all__ = ["Encoder", "LanguageModel", "SequenceClassifier", "load_pretrained", "parse_pattern"]
