"""Qwen2.5-VL in JAX/Flax NNX."""
from models.qwen2_5_vl.config import ModelConfig, TextConfig, VisionConfig, get_preset
from models.qwen2_5_vl.model import Qwen2_5_VL
from models.qwen2_5_vl.text import KVCache

__all__ = ["ModelConfig", "TextConfig", "VisionConfig", "Qwen2_5_VL", "KVCache", "get_preset"]
