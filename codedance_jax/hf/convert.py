"""Converts a Hugging Face Qwen2.5-VL directory (config.json + safetensors shards) into our
checkpoint: `OUT/params/` (orbax) plus the HF config, tokenizer and processor files.

    python -m codedance_jax.hf.convert --hf_dir=DIR --out_dir=CKPT [--dtype=bfloat16]

Tensor names, shapes and dtypes are checked from the shard headers before any data is read;
then each tensor is written straight into its slab of the output (see StreamingParamsWriter),
so memory holds about one tensor rather than the model. The output appears only when complete.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os

import ml_dtypes  # registers bfloat16 with numpy, needed to read bf16 safetensors
import numpy as np
from absl import app, flags
from safetensors import SafetensorError, safe_open

from codedance_jax.hf.files import DTYPES, atomic_directory, copy_assets
from codedance_jax.hf.keymap import IGNORED_HF_TENSORS, canonical_hf_name, full_shape, hf_index
from codedance_jax.logging_setup import quiet_library_logs
from models.qwen2_5_vl.config import ModelConfig
from models.qwen2_5_vl.model import PARAMS_SUBDIR
from models.qwen2_5_vl.params_io import StreamingParamsWriter


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


@contextlib.contextmanager
def open_shard(shard: str):
    """`safe_open`, with safetensors' own errors (which do not say which file) naming the shard."""
    try:
        with safe_open(shard, framework="np") as f:
            yield f
    except SafetensorError as err:
        raise ValueError(f"{shard}: not a readable safetensors file, perhaps truncated or corrupt ({err})") from err


_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
_SAFETENSORS_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}


def read_tensor(shard: str, name: str) -> np.ndarray:
    """One tensor, with the shard mapped only meanwhile: pages read from a shard that stays open
    count as resident memory until it closes, which would hold a whole shard per tensor read."""
    with open_shard(shard) as f:
        return f.get_tensor(name)


def plan_conversion(cfg: ModelConfig, shards: list[str], dtype=None) -> dict[tuple[str, ...], np.dtype]:
    """Checks every tensor's name and shape from the shard headers alone (no data read) and
    returns the dtype of each of our parameters. Raises naming the shard and tensor."""
    index = hf_index(cfg)
    seen: dict[str, str] = {}
    dtypes: dict[tuple[str, ...], np.dtype] = {}
    for shard in shards:
        with open_shard(shard) as f:
            for name in f.keys():
                key = canonical_hf_name(name)
                if IGNORED_HF_TENSORS.match(key):
                    continue
                if key not in index:
                    raise ValueError(f"{shard}: unexpected tensor '{name}' (not part of this model config)")
                if key in seen:
                    raise ValueError(f"{shard}: tensor '{name}' also appears in {seen[key]}")
                seen[key] = shard
                rule, _ = index[key]
                header = f.get_slice(name)
                shape, type_name = tuple(header.get_shape()), header.get_dtype()
                if shape != rule.layout.hf_shape:
                    raise ValueError(f"{shard}: tensor '{name}' has shape {shape}, config expects {rule.layout.hf_shape}")
                if type_name not in _SAFETENSORS_DTYPES:
                    raise ValueError(f"{shard}: tensor '{name}' has unsupported dtype {type_name}")
                dtypes.setdefault(rule.ours, np.dtype(dtype or _SAFETENSORS_DTYPES[type_name]))
    missing = sorted(set(index) - set(seen))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} tensors: {shown}")
    return dtypes


def convert(hf_dir: str, out_dir: str, dtype: str | None = None, overwrite: bool = False) -> str:
    """Converts `hf_dir` into our checkpoint at `out_dir`; returns `out_dir`.

    Parameters keep the source dtype unless `dtype` is given. Each tensor goes straight from its
    shard into its slab of the output, so memory holds about one tensor at a time.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = ModelConfig.from_json_file(os.path.join(hf_dir, "config.json"))
    shards = safetensors_shards(hf_dir)
    param_dtypes = plan_conversion(cfg, shards, DTYPES.get(dtype))
    index = hf_index(cfg)
    rules_by_param = {rule.ours: rule for rule, _ in index.values()}
    with atomic_directory(out_dir, overwrite) as tmp:
        writer = StreamingParamsWriter(
            os.path.join(tmp, PARAMS_SUBDIR),
            {key: (full_shape(rule), param_dtypes[key]) for key, rule in rules_by_param.items()},
            slab_axis_keys={key for key, rule in rules_by_param.items() if rule.stacked})
        for shard in shards:
            with open_shard(shard) as f:
                names = list(f.keys())
            for name in names:
                key = canonical_hf_name(name)
                if IGNORED_HF_TENSORS.match(key):
                    continue
                rule, layer = index[key]
                writer.write(rule.ours, rule.layout.to_ours(read_tensor(shard, name), rule.our_shape), layer)
        copy_assets(hf_dir, tmp)
    return out_dir


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's per-thread malloc arenas. tensorstore writes from many threads and every
    arena keeps its freed buffers, which made peak memory grow with the model (measured with
    benchmarks/convert_memory.py on a 1.9 GB model in 190 MB shards: 441 MB of growth uncapped,
    87 MB capped). No-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def main(argv):
    del argv
    quiet_library_logs()
    limit_malloc_arenas()
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
