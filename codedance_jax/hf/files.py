"""What travels with a checkpoint besides the tensors, and atomic directory writes."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

# Copied verbatim between an HF directory and our checkpoint directory, when present.
ASSET_FILES = (
    "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja", "video_preprocessor_config.json",
)


def copy_assets(src_dir: str, dst_dir: str, skip: tuple[str, ...] = ()) -> list[str]:
    copied = []
    for name in ASSET_FILES:
        src = os.path.join(src_dir, name)
        if name not in skip and os.path.isfile(src):
            shutil.copy2(src, os.path.join(dst_dir, name))
            copied.append(name)
    return copied


@contextlib.contextmanager
def atomic_directory(out_dir: str, overwrite: bool = False):
    """Yields a temporary sibling directory that is renamed to `out_dir` only if the block
    completes; on any error it is removed, so `out_dir` is never left half-written."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
