"""Config, trunk and thin domain wrappers."""

from flowrl.models.config import FlowformerConfig, JsonConfig
from flowrl.models.decoder import FlowDecoder
from flowrl.models.flowformer import Flowformer

__all__ = ["FlowDecoder", "Flowformer", "FlowformerConfig", "JsonConfig"]

# Thin domain wrappers around the trunk (sequence, time series, image, language) and their save/load.
from flowrl.models.classifiers import (  # noqa: E402
    ImageClassifier,
    ImageClassifierConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    TimeSeriesClassifier,
    TimeSeriesClassifierConfig,
)
from flowrl.models.io import load_model, save_model  # noqa: E402
from flowrl.models.lm import CausalLM, CausalLMConfig, LMState  # noqa: E402

__all__ += [
    "CausalLM",
    "CausalLMConfig",
    "ImageClassifier",
    "ImageClassifierConfig",
    "LMState",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "TimeSeriesClassifier",
    "TimeSeriesClassifierConfig",
    "load_model",
    "save_model",
]
