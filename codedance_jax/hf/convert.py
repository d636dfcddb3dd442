"""Converts a Hugging Face Qwen2.5-VL directory (config.json + safetensors shards) into our
checkpoint: `OUT/params/` (orbax) plus the HF config, tokenizer and processor files.

    python -m codedance_jax.hf.convert --hf_dir=DIR --out_dir=CKPT [--dtype=bfloat16]

Shards are read one at a time and each tensor is written straight into a disk-backed array
(np.memmap) of its stacked parameter, so peak memory stays near one shard rather than the
whole model. The output appears only when complete.
"""
from __future__ import annotations

import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, needed to read bf16 safetensors)
import numpy as np
from absl import app, flags
from safetensors import safe_open

from codedance_jax.hf.files import DTYPES, atomic_directory, copy_assets
from codedance_jax.hf.keymap import IGNORED_HF_TENSORS, Rule, canonical_hf_name, full_shape, hf_index
from models.qwen2_5_vl.config import ModelConfig
from models.qwen2_5_vl.model import PARAMS_SUBDIR
from models.qwen2_5_vl.params_io import save_params



def safetensors_shards(hf_dir: str) -> list[str]:
    """Shard paths from model.safetensors.index.json, or every *.safetensors file."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e})") from e
        shards = sorted(set(weight_map.values()))
    else:
        shards = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    paths = [os.path.join(hf_dir, s) for s in shards]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: shard listed in the index is missing")
    if not paths:
        raise FileNotFoundError(f"{hf_dir}: no .safetensors files")
    return paths


class ParamAssembler:
    """Collects HF tensors into our (stacked) parameter layout, in disk-backed arrays."""

    def __init__(self, cfg: ModelConfig, scratch_dir: str, dtype=None):
        self.index = hf_index(cfg)
        self.scratch_dir = scratch_dir
        self.dtype = dtype
        self.arrays: dict[tuple[str, ...], np.ndarray] = {}
        self.seen: set[str] = set()

    def _target(self, rule: Rule, dtype) -> np.ndarray:
        if rule.ours not in self.arrays:
            path = os.path.join(self.scratch_dir, "-".join(rule.ours) + ".bin")
            self.arrays[rule.ours] = np.memmap(path, dtype=dtype, mode="w+", shape=full_shape(rule))
        return self.arrays[rule.ours]

    def put(self, name: str, tensor: np.ndarray, source: str) -> None:
        key = canonical_hf_name(name)
        if IGNORED_HF_TENSORS.match(key):
            return
        if key not in self.index:
            raise ValueError(f"{source}: unexpected tensor '{name}' (not part of this model config)")
        if key in self.seen:
            raise ValueError(f"{source}: tensor '{name}' appears twice")
        rule, layer = self.index[key]
        if tuple(tensor.shape) != rule.layout.hf_shape:
            raise ValueError(f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                             f"config expects {rule.layout.hf_shape}")
        value = rule.layout.to_ours(tensor, rule.our_shape)
        target = self._target(rule, self.dtype or tensor.dtype)
        if layer is None:
            target[...] = value
        else:
            target[layer] = value
        self.seen.add(key)

    def finish(self) -> dict:
        missing = sorted(set(self.index) - self.seen)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ValueError(f"checkpoint is missing {len(missing)} tensors: {shown}")
        tree: dict = {}
        for path, array in self.arrays.items():
            array.flush()
            node = tree
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = array
        return tree


def convert(hf_dir: str, out_dir: str, dtype: str | None = None, overwrite: bool = False) -> str:
    """Converts `hf_dir` into our checkpoint at `out_dir`; returns `out_dir`."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = ModelConfig.from_json_file(os.path.join(hf_dir, "config.json"))
    shards = safetensors_shards(hf_dir)
    with atomic_directory(out_dir, overwrite) as tmp:
        scratch = os.path.join(tmp, "scratch")
        os.makedirs(scratch)
        assembler = ParamAssembler(cfg, scratch, DTYPES.get(dtype))
        for shard in shards:
            with safe_open(shard, framework="np") as f:
                for name in f.keys():
                    assembler.put(name, f.get_tensor(name), source=shard)
        save_params(os.path.join(tmp, PARAMS_SUBDIR), assembler.finish())
        del assembler
        for name in os.listdir(scratch):
            os.remove(os.path.join(scratch, name))
        os.rmdir(scratch)
        copy_assets(hf_dir, tmp)
    return out_dir


def main(argv):
    del argv
    flags_ = flags.FLAGS
    convert(flags_.hf_dir, flags_.out_dir, flags_.dtype, flags_.overwrite)
    print(f"converted {flags_.hf_dir} -> {flags_.out_dir}")


if __name__ == "__main__":
    # Flags are defined only when run as a binary, so tests can import both convert and export.
    flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + *.safetensors).", required=True)
    flags.DEFINE_string("out_dir", None, "Where to write the converted checkpoint.", required=True)
    flags.DEFINE_enum("dtype", None, list(DTYPES), "Parameter dtype to store; default keeps the source dtype.")
    flags.DEFINE_bool("overwrite", False, "Replace out_dir if it exists.")
    app.run(main)
