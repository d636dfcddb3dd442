"""Real transformers Qwen2.5-VL models built from random tiny configs, for parity tests."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig

from codedance_jax.hf.verify import random_hf_model  # noqa: F401  (re-exported for the tests)
from codedance_jax.processing.image import image_token_count

IMAGE_PAD, VISION_START, VISION_END = 151655, 151652, 151653
TEXT_VOCAB = 1000  # random text ids are drawn below this; the special ids sit far above it


def tiny_hf_config(tie: bool = True, depth: int = 4, fullatt=(1, 3), layers: int = 3,
                   window_size: int = 112) -> Qwen2_5_VLConfig:
    """A small config that keeps every structural feature (GQA, window + full blocks)."""
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=64, intermediate_size=112, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                          "rope_theta": 1000000.0}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=list(fullatt), window_size=window_size),
        tie_word_embeddings=tie)


def save_hf(model, path: str, flat: bool = False) -> str:
    """save_pretrained; with flat=True rewrite config.json in the Hub's flat form."""
    model.save_pretrained(path)
    if flat:
        flatten_config_json(os.path.join(path, "config.json"))
    return path


def flatten_config_json(path: str) -> None:
    with open(path) as f:
        cfg = json.load(f)
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    for k, v in text.items():
        if k != "model_type":
            cfg[k] = v
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    vis = cfg["vision_config"]
    vis.pop("rope_parameters", None)
    vis["in_chans"] = vis.pop("in_channels")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


def random_pixels(rng: np.random.Generator, grid_thw) -> np.ndarray:
    n = int(np.prod(np.asarray(grid_thw).reshape(-1, 3), axis=-1).sum())
    return rng.standard_normal((n, 1176)).astype(np.float32)


QWEN_VISION_IDS = (VISION_START, IMAGE_PAD, VISION_END)


def image_run(grid, vision_ids=QWEN_VISION_IDS) -> list[int]:
    start, pad, end = vision_ids
    return [start] + [pad] * image_token_count(grid) + [end]


def sequence(rng: np.random.Generator, pieces, vision_ids=QWEN_VISION_IDS) -> list[int]:
    """pieces: ints (that many random text tokens) or grids (an image run); vision_ids: the
    (vision start, image pad, vision end) ids of the model's config."""
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, int):
            ids += rng.integers(0, TEXT_VOCAB, piece).tolist()
        else:
            ids += image_run(piece, vision_ids)
    return ids


def hf_logits(model, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None) -> np.ndarray:
    ids = torch.tensor(np.asarray(input_ids), dtype=torch.long)
    kwargs = {"mm_token_type_ids": (ids == model.config.image_token_id).int()}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if pixel_values is not None:
        kwargs["pixel_values"] = torch.tensor(pixel_values)
        kwargs["image_grid_thw"] = torch.tensor(np.asarray(image_grid_thw), dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits.float().numpy()
