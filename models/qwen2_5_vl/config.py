"""Qwen2.5-VL configuration: dataclasses, named presets, and parsing of HF config.json.

Hub checkpoints keep a flat config.json (text fields at the root, `rope_scaling` with
`type: mrope`); transformers 5 writes a nested one (`text_config`, `vision_config`,
`rope_parameters`). `ModelConfig.from_hf_dict` reads both.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

MODEL_TYPE = "qwen2_5_vl"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Text attention: "splash" = Pallas TPU kernels (attention_kernels.py), "chunked" = the XLA paths
# in layers.py, "auto" = Pallas on TPU where the shapes tile, else chunked.
ATTENTION_IMPLS = ("auto", "chunked", "splash")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112  # pixels
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    in_channels: int = 3
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # fixed in the reference implementation

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Side of an attention window, in merged tokens."""
        return self.window_size // self.spatial_merge_size // self.patch_size

    @property
    def window_patches(self) -> int:
        """Patches in one full attention window."""
        return self.window_merged**2 * self.merge_unit


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    tie_word_embeddings: bool = False
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643  # <|endoftext|>; written to config.json, where transformers checks it is in the vocabulary
    eos_token_id: int = 151645  # <|im_end|>
    dtype: str = "float32"  # compute dtype; parameters keep their own dtype
    attention_impl: str = "auto"  # one of ATTENTION_IMPLS; a runtime choice, not saved in config.json

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if sum(self.text.mrope_section) * 2 != self.text.head_dim:
            raise ValueError(
                f"mrope_section {self.text.mrope_section} must sum to head_dim/2 = {self.text.head_dim // 2}")
        if self.text.num_heads % self.text.num_kv_heads:
            raise ValueError(f"num_heads {self.text.num_heads} is not a multiple of "
                             f"num_key_value_heads {self.text.num_kv_heads}")
        bad = [i for i in self.vision.fullatt_block_indexes if not 0 <= i < self.vision.depth]
        if bad:
            raise ValueError(f"fullatt_block_indexes {bad} outside vision depth {self.vision.depth}")

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parses a flat (hub) or nested (transformers 5) Qwen2.5-VL config dict."""
        model_type = cfg.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"{source}: model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        text = cfg.get("text_config") or cfg  # flat configs keep text fields at the root
        vis = cfg.get("vision_config")
        if not isinstance(vis, dict):
            raise ValueError(f"{source}: missing 'vision_config'")
        rope = text.get("rope_parameters") or text.get("rope_scaling") or cfg.get("rope_scaling") or {}

        def need(d: dict, key: str, where: str):
            if key not in d:
                raise ValueError(f"{source}: missing key '{where}{key}'")
            return d[key]

        tp = "text_config." if "text_config" in cfg else ""
        hidden = need(text, "hidden_size", tp)
        text_cfg = TextConfig(
            vocab_size=need(text, "vocab_size", tp),
            hidden_size=hidden,
            intermediate_size=need(text, "intermediate_size", tp),
            num_layers=need(text, "num_hidden_layers", tp),
            num_heads=need(text, "num_attention_heads", tp),
            num_kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", text.get("rope_theta", cfg.get("rope_theta", 1e6))),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
            hidden_act=text.get("hidden_act", "silu"),
            max_position_embeddings=text.get("max_position_embeddings", 128000),
        )
        vis_rope = vis.get("rope_parameters") or {}
        vision_cfg = VisionConfig(
            depth=need(vis, "depth", "vision_config."),
            hidden_size=need(vis, "hidden_size", "vision_config."),
            intermediate_size=need(vis, "intermediate_size", "vision_config."),
            num_heads=need(vis, "num_heads", "vision_config."),
            out_hidden_size=vis.get("out_hidden_size", hidden),
            patch_size=vis.get("patch_size", 14),
            temporal_patch_size=vis.get("temporal_patch_size", 2),
            spatial_merge_size=vis.get("spatial_merge_size", 2),
            window_size=vis.get("window_size", 112),
            fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", (7, 15, 23, 31))),
            in_channels=vis.get("in_channels", vis.get("in_chans", 3)),
            hidden_act=vis.get("hidden_act", "silu"),
            rope_theta=vis_rope.get("rope_theta", 10000.0),
        )
        tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        return cls(
            vision=vision_cfg,
            text=text_cfg,
            tie_word_embeddings=bool(tie),
            image_token_id=cfg.get("image_token_id", 151655),
            video_token_id=cfg.get("video_token_id", 151656),
            vision_start_token_id=cfg.get("vision_start_token_id", 151652),
            vision_end_token_id=cfg.get("vision_end_token_id", 151653),
            bos_token_id=_first_id(text.get("bos_token_id", cfg.get("bos_token_id")), 151643),
            eos_token_id=_first_id(text.get("eos_token_id", cfg.get("eos_token_id")), 151645),
        )

    @classmethod
    def from_json_file(cls, path: str) -> "ModelConfig":
        try:
            with open(path) as f:
                cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read model config {path}: {e}") from e
        return cls.from_hf_dict(cfg, source=path)

    def to_hf_dict(self) -> dict[str, Any]:
        """The nested transformers-5 form, used when exporting a checkpoint that has no source config."""
        t, v = self.text, self.vision
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads,
                "rms_norm_eps": t.rms_norm_eps,
                "hidden_act": t.hidden_act,
                "max_position_embeddings": t.max_position_embeddings,
                "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                                    "mrope_section": list(t.mrope_section)},
                "tie_word_embeddings": self.tie_word_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "in_channels": v.in_channels,
                "hidden_act": v.hidden_act,
            },
        }


def _first_id(value: int | list[int] | None, default: int) -> int:
    """A config's token id; transformers allows a list of eos ids, of which generation stops on any."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def _vision_for(out_hidden_size: int) -> VisionConfig:
    return VisionConfig(out_hidden_size=out_hidden_size)


PRESETS: dict[str, ModelConfig] = {
    # Small enough for CPU tests and the laptop demo; every structural feature is kept
    # (GQA, window + full attention blocks, a window that does not divide small grids).
    "tiny": ModelConfig(
        vision=VisionConfig(depth=4, hidden_size=64, intermediate_size=96, num_heads=4,
                            out_hidden_size=128, fullatt_block_indexes=(1, 3)),
        text=TextConfig(vocab_size=151936, hidden_size=128, intermediate_size=256, num_layers=4,
                        num_heads=4, num_kv_heads=2, mrope_section=(4, 6, 6)),
        tie_word_embeddings=True,
    ),
    # `make demo` (SFT -> GRPO -> eval) within ~15 minutes on a 2-core CPU. A CPU step costs about
    # tokens x (LM head + body), and with Qwen's 152k vocabulary the head is ~50x this body, so the
    # demo uses the suite's own 1024-id tokenizer (configs/demo_tokenizer, built by
    # codedance_jax/processing/small_tokenizer.py; Qwen's added tokens come first, so the vision
    # ids below are Qwen's minus 151643). Two text layers of width 128 still form the induction
    # heads that copy a question's colour into a code template; a 2-block vision tower of width 64
    # sees 64 tokens per image (224x224 px).
    "demo": ModelConfig(
        vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                            fullatt_block_indexes=(1,)),
        text=TextConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_layers=2,
                        num_heads=4, num_kv_heads=2, mrope_section=(4, 6, 6)),
        tie_word_embeddings=True, image_token_id=12, video_token_id=13, vision_start_token_id=9,
        vision_end_token_id=10, bos_token_id=0, eos_token_id=2,
    ),
    "3b": ModelConfig(
        vision=_vision_for(2048),
        text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
                        num_heads=16, num_kv_heads=2),
        tie_word_embeddings=True,
    ),
    "7b": ModelConfig(vision=_vision_for(3584), text=TextConfig()),
    "32b": ModelConfig(
        vision=_vision_for(5120),
        text=TextConfig(hidden_size=5120, intermediate_size=27648, num_layers=64, num_heads=40,
                        num_kv_heads=8),
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def load_config(ckpt_or_hf_dir: str) -> ModelConfig:
    return ModelConfig.from_json_file(os.path.join(ckpt_or_hf_dir, "config.json"))
