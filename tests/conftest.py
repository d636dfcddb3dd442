"""Test-wide setup: CPU JAX with 8 host devices, configured before JAX is imported anywhere."""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hf_pair(tmp_path_factory):
    """Factory: (transformers model, our converted model, checkpoint dir) for a tiny random
    config, built once per (tie, flat) variant for the whole session."""
    cache = {}

    def make(tie: bool = True, flat: bool = False):
        if (tie, flat) not in cache:
            from codedance_jax.hf.convert import convert
            from hf_reference import random_hf_model, save_hf, tiny_hf_config
            from models.qwen2_5_vl import Qwen2_5_VL

            root = tmp_path_factory.mktemp(f"pair_tie{int(tie)}_flat{int(flat)}")
            hf = random_hf_model(tiny_hf_config(tie=tie), seed=int(tie) + 2 * int(flat))
            save_hf(hf, str(root / "hf"), flat=flat)
            convert(str(root / "hf"), str(root / "ckpt"))
            cache[tie, flat] = (hf, Qwen2_5_VL.from_checkpoint(str(root / "ckpt")), str(root / "ckpt"))
        return cache[tie, flat]

    return make
