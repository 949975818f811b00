"""Config, trunk and thin domain wrappers."""

from flowrl.models.config import FlowformerConfig, JsonConfig
from flowrl.models.flowformer import Flowformer

__all__ = ["Flowformer", "FlowformerConfig", "JsonConfig"]
