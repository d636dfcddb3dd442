"""Exports our checkpoint to a Hugging Face directory that transformers (and so vLLM / SGLang) loads.

    python -m codedance_jax.hf.export --ckpt_dir=CKPT --out_dir=DIR [--dtype=bfloat16]

Writes sharded safetensors with an index, the config.json (the source's own when the checkpoint
came from `convert`, otherwise generated), and the tokenizer / processor files the checkpoint has.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags
from safetensors.numpy import save_file

from codedance_jax.hf.files import DTYPES, atomic_directory, copy_assets
from codedance_jax.hf.keymap import rules
from codedance_jax.logging_setup import quiet_library_logs
from models.qwen2_5_vl.config import ModelConfig, load_config
from models.qwen2_5_vl.model import PARAMS_SUBDIR, Qwen2_5_VL
from models.qwen2_5_vl.params_io import load_params



def hf_tensors(cfg: ModelConfig, params: dict, dtype=None):
    """Yields (HF name, numpy tensor) for every tensor of the model, in key-table order."""
    for rule in rules(cfg):
        node = params
        for part in rule.ours:
            node = node[part]
        array = np.asarray(node)
        if dtype is not None:
            array = array.astype(dtype)
        for name, layer in rule.hf_names():
            yield name, rule.layout.to_hf(array if layer is None else array[layer])


def write_sharded(tensors, out_dir: str, max_shard_bytes: int) -> None:
    """Writes safetensors shards of at most `max_shard_bytes` plus model.safetensors.index.json."""
    shards: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for name, tensor in tensors:
        if sizes[-1] and sizes[-1] + tensor.nbytes > max_shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor
        sizes[-1] += tensor.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1
                 else "model.safetensors")
        save_file(shard, os.path.join(out_dir, fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    if len(shards) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f, indent=2)


def export(ckpt_dir: str, out_dir: str, dtype: str | None = None, max_shard_gb: float = 4.0,
           overwrite: bool = False) -> str:
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = load_config(ckpt_dir)
    params = load_params(os.path.join(ckpt_dir, PARAMS_SUBDIR), Qwen2_5_VL.abstract(cfg).params())
    out_dtype = DTYPES.get(dtype)
    with atomic_directory(out_dir, overwrite) as tmp:
        write_sharded(hf_tensors(cfg, params, out_dtype), tmp, int(max_shard_gb * 2**30))
        copy_assets(ckpt_dir, tmp)
        if out_dtype is not None:
            _set_config_dtype(os.path.join(tmp, "config.json"), dtype)
    return out_dir


def _set_config_dtype(path: str, name: str) -> None:
    with open(path) as f:
        config = json.load(f)
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = name
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def main(argv):
    del argv
    quiet_library_logs()
    f = flags.FLAGS
    export(f.ckpt_dir, f.out_dir, f.dtype, f.max_shard_gb, f.overwrite)
    print(f"exported {f.ckpt_dir} -> {f.out_dir}")


if __name__ == "__main__":
    flags.DEFINE_string("ckpt_dir", None, "Our checkpoint directory (from convert or training).", required=True)
    flags.DEFINE_string("out_dir", None, "Hugging Face directory to write.", required=True)
    flags.DEFINE_enum("dtype", None, list(DTYPES), "Tensor dtype to write; default keeps the stored dtype.")
    flags.DEFINE_float("max_shard_gb", 4.0, "Largest safetensors shard, in GiB.")
    flags.DEFINE_bool("overwrite", False, "Replace out_dir if it exists.")
    app.run(main)
