"""The one table between our parameter tree and Hugging Face's Qwen2.5-VL tensor names.

Both `convert` (HF -> ours) and `export` (ours -> HF) read this table, so a tensor can never be
mapped one way and forgotten the other. Each rule names our parameter path, the HF on-disk name
(with `{i}` for the layer index of stacked parameters) and a layout hook.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterator

import numpy as np

from models.qwen2_5_vl.config import ModelConfig

# transformers 5 keeps vision/text under `model.` in memory; on disk (and on the Hub) they are
# `visual.*` / `model.*`. Both spellings are accepted on input; we always write the Hub one.
_IN_MEMORY_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))


def canonical_hf_name(name: str) -> str:
    for memory, disk in _IN_MEMORY_PREFIXES:
        if name.startswith(memory):
            return disk + name[len(memory):]
    return name


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one tensor is laid out on each side (excluding our leading layer axis).

    kind "same": identical up to a reshape (norms, embeddings, biases flattened on the HF side).
    kind "linear": HF stores torch Linear [out, in]; we store [in..., out...] with the first
      `n_in` axes being the input axes, so einsum strings read naturally.
    `hf_shape` is the HF tensor's shape.
    """
    kind: str
    hf_shape: tuple[int, ...]
    n_in: int = 1

    def to_ours(self, hf: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "same":
            return hf.reshape(our_shape)
        n_in = math.prod(our_shape[: self.n_in])
        return hf.reshape(-1, n_in).T.reshape(our_shape)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.kind == "same":
            return ours.reshape(self.hf_shape)
        n_in = math.prod(ours.shape[: self.n_in])
        return np.ascontiguousarray(ours.reshape(n_in, -1).T).reshape(self.hf_shape)


@dataclasses.dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]       # path in the params dict
    hf: str                     # HF on-disk name; contains "{i}" when stacked
    our_shape: tuple[int, ...]  # per layer when stacked
    layout: Layout
    num_layers: int = 0         # 0 = not stacked

    @property
    def stacked(self) -> bool:
        return self.num_layers > 0

    def hf_names(self) -> Iterator[tuple[str, int | None]]:
        if self.stacked:
            for i in range(self.num_layers):
                yield self.hf.format(i=i), i
        else:
            yield self.hf, None


def _same(shape, hf_shape=None) -> Layout:
    return Layout("same", tuple(hf_shape or shape))


def _linear(in_shape: tuple[int, ...], out_shape: tuple[int, ...], hf_shape=None) -> tuple[tuple, Layout]:
    our = (*in_shape, *out_shape)
    hf = hf_shape or (math.prod(out_shape), math.prod(in_shape))
    return our, Layout("linear", tuple(hf), n_in=len(in_shape))


def rules(cfg: ModelConfig) -> list[Rule]:
    v, t = cfg.vision, cfg.text
    out: list[Rule] = []

    def add(ours, hf, shape_layout, num_layers=0):
        shape, layout = shape_layout
        out.append(Rule(tuple(ours.split("/")), hf, tuple(shape), layout, num_layers))

    def same(shape, hf_shape=None):
        return tuple(shape), _same(shape, hf_shape)

    # Vision tower. The Conv3d patch embed is a matmul on (C, T, p, p)-ordered rows.
    conv_shape = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    add("vision/patch_embed", "visual.patch_embed.proj.weight",
        _linear((v.patch_dim,), (v.hidden_size,), hf_shape=conv_shape))
    d, n, h, f = v.hidden_size, v.num_heads, v.head_dim, v.intermediate_size
    vb = "visual.blocks.{i}."
    for ours, hf, sl in [
        ("norm1", "norm1.weight", same((d,))),
        ("norm2", "norm2.weight", same((d,))),
        ("qkv_kernel", "attn.qkv.weight", _linear((d,), (3, n, h))),
        ("qkv_bias", "attn.qkv.bias", same((3, n, h), (3 * d,))),
        ("proj_kernel", "attn.proj.weight", _linear((n, h), (d,))),
        ("proj_bias", "attn.proj.bias", same((d,))),
        ("gate_kernel", "mlp.gate_proj.weight", _linear((d,), (f,))),
        ("gate_bias", "mlp.gate_proj.bias", same((f,))),
        ("up_kernel", "mlp.up_proj.weight", _linear((d,), (f,))),
        ("up_bias", "mlp.up_proj.bias", same((f,))),
        ("down_kernel", "mlp.down_proj.weight", _linear((f,), (d,))),
        ("down_bias", "mlp.down_proj.bias", same((d,))),
    ]:
        add(f"vision/blocks/{ours}", vb + hf, sl, v.depth)
    merged = d * v.merge_unit
    add("vision/merger/norm", "visual.merger.ln_q.weight", same((d,)))
    add("vision/merger/fc1_kernel", "visual.merger.mlp.0.weight", _linear((merged,), (merged,)))
    add("vision/merger/fc1_bias", "visual.merger.mlp.0.bias", same((merged,)))
    add("vision/merger/fc2_kernel", "visual.merger.mlp.2.weight", _linear((merged,), (v.out_hidden_size,)))
    add("vision/merger/fc2_bias", "visual.merger.mlp.2.bias", same((v.out_hidden_size,)))

    # Text decoder.
    D, N, K, H, F = t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim, t.intermediate_size
    tl = "model.layers.{i}."
    add("text/embed", "model.embed_tokens.weight", same((t.vocab_size, D)))
    for ours, hf, sl in [
        ("input_norm", "input_layernorm.weight", same((D,))),
        ("q_kernel", "self_attn.q_proj.weight", _linear((D,), (N, H))),
        ("q_bias", "self_attn.q_proj.bias", same((N, H), (N * H,))),
        ("k_kernel", "self_attn.k_proj.weight", _linear((D,), (K, H))),
        ("k_bias", "self_attn.k_proj.bias", same((K, H), (K * H,))),
        ("v_kernel", "self_attn.v_proj.weight", _linear((D,), (K, H))),
        ("v_bias", "self_attn.v_proj.bias", same((K, H), (K * H,))),
        ("o_kernel", "self_attn.o_proj.weight", _linear((N, H), (D,))),
        ("post_norm", "post_attention_layernorm.weight", same((D,))),
        ("gate_kernel", "mlp.gate_proj.weight", _linear((D,), (F,))),
        ("up_kernel", "mlp.up_proj.weight", _linear((D,), (F,))),
        ("down_kernel", "mlp.down_proj.weight", _linear((F,), (D,))),
    ]:
        add(f"text/layers/{ours}", tl + hf, sl, t.num_layers)
    add("text/final_norm", "model.norm.weight", same((D,)))
    if not cfg.tie_word_embeddings:
        add("text/lm_head", "lm_head.weight", _linear((D,), (t.vocab_size,)))
    return out


def full_shape(rule: Rule) -> tuple[int, ...]:
    """Our parameter's shape including the layer axis."""
    return (rule.num_layers, *rule.our_shape) if rule.stacked else rule.our_shape


def hf_index(cfg: ModelConfig) -> dict[str, tuple[Rule, int | None]]:
    """HF on-disk name -> (rule, layer index or None)."""
    return {name: (rule, i) for rule in rules(cfg) for name, i in rule.hf_names()}


# HF tensors that carry no parameters of ours (rotary buffers in very old checkpoints).
IGNORED_HF_TENSORS = re.compile(r".*\.(inv_freq|rotary_emb\.inv_freq)$")
