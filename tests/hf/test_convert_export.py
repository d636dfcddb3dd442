"""HF checkpoints in and out: round trip, sharding, dtypes, bad input, key-table coverage."""
import json
import os
import re
import subprocess
import sys

import ml_dtypes  # noqa: F401
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from codedance_jax.hf.convert import convert
from codedance_jax.hf.export import export
from codedance_jax.hf.keymap import canonical_hf_name, hf_index
from hf_reference import random_hf_model, tiny_hf_config
from models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, get_preset
from models.qwen2_5_vl.config import PRESETS


def read_safetensors(directory):
    tensors = {}
    for name in os.listdir(directory):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(directory, name), framework="np") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


@pytest.mark.parametrize("torch_dtype", [torch.float32, torch.bfloat16])
def test_sharded_round_trip_is_bit_identical_and_loads_in_transformers(tmp_path, torch_dtype):
    hf = random_hf_model(tiny_hf_config(tie=False), seed=3).to(torch_dtype)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="300KB")
    (tmp_path / "hf" / "tokenizer_config.json").write_text('{"model_max_length": 32768}')
    assert len([n for n in os.listdir(tmp_path / "hf") if n.endswith(".safetensors")]) > 2

    convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    export(str(tmp_path / "ckpt"), str(tmp_path / "out"), max_shard_gb=0.0005)

    source, exported = read_safetensors(tmp_path / "hf"), read_safetensors(tmp_path / "out")
    assert sorted(source) == sorted(exported)
    for name, tensor in source.items():
        assert exported[name].dtype == tensor.dtype, name
        assert exported[name].tobytes() == tensor.tobytes(), name
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == '{"model_max_length": 32768}'
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()

    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch_dtype)
    original = hf.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_convert_casts_on_request_and_export_writes_dtype(tmp_path):
    hf = random_hf_model(tiny_hf_config(tie=True), seed=4)
    hf.save_pretrained(tmp_path / "hf")
    convert(str(tmp_path / "hf"), str(tmp_path / "ckpt"), dtype="bfloat16")
    model = Qwen2_5_VL.from_checkpoint(str(tmp_path / "ckpt"))
    assert all(str(p.dtype) == "bfloat16" for p in jax_leaves(model.params()))
    export(str(tmp_path / "ckpt"), str(tmp_path / "out"), dtype="float32")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert all(t.dtype == np.float32 for t in read_safetensors(tmp_path / "out").values())


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


@pytest.fixture
def hf_dir(tmp_path):
    hf = random_hf_model(tiny_hf_config(tie=True), seed=5)
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def rewrite_tensors(hf_dir, edit):
    path = hf_dir / "model.safetensors"
    with safe_open(str(path), framework="np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"), r"missing 1 tensors: model\.layers\.1\.self_attn\.k_proj\.bias"),
    (lambda t: t.__setitem__("model.layers.7.mlp.up_proj.weight", np.zeros((2, 2), np.float32)),
     r"unexpected tensor 'model\.layers\.7\.mlp\.up_proj\.weight'"),
    (lambda t: t.__setitem__("visual.merger.mlp.0.bias", np.zeros(3, np.float32)),
     r"'visual\.merger\.mlp\.0\.bias' has shape \(3,\)"),
])
def test_bad_checkpoints_name_the_tensor_and_leave_nothing_behind(tmp_path, hf_dir, edit, message):
    rewrite_tensors(hf_dir, edit)
    with pytest.raises(ValueError, match=message):
        convert(str(hf_dir), str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no output, no partial directory


def test_bad_configs_name_the_key(tmp_path, hf_dir):
    config_path = hf_dir / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type is 'llava'"):
        convert(str(hf_dir), str(tmp_path / "ckpt"))
    del config["text_config"]["num_attention_heads"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing key 'text_config\.num_attention_heads'"):
        convert(str(hf_dir), str(tmp_path / "ckpt"))


def test_existing_output_is_kept_unless_overwrite(tmp_path, hf_dir):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileExistsError):
        convert(str(hf_dir), str(tmp_path / "ckpt"))
    convert(str(hf_dir), str(tmp_path / "ckpt"), overwrite=True)
    Qwen2_5_VL.from_checkpoint(str(tmp_path / "ckpt"))


def test_checkpoint_for_another_config_is_refused(tmp_path, hf_dir):
    convert(str(hf_dir), str(tmp_path / "ckpt"))
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["text_config"]["intermediate_size"] = 128
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"text/layers/gate_kernel: stored \(3, 64, 112\), expected \(3, 64, 128\)"):
        Qwen2_5_VL.from_checkpoint(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("damage", [
    lambda data: data[:6],                                 # cut inside the header length
    lambda data: data[:-100],                              # cut inside the tensor data
    lambda data: data[:8] + b"!" * 16 + data[24:],         # header that is not JSON
], ids=["cut_header", "cut_data", "corrupt_header"])
def test_damaged_shards_are_named(tmp_path, hf_dir, damage):
    shard = hf_dir / "model.safetensors"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(shard))}: not a readable safetensors file"):
        convert(str(hf_dir), str(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["hf"]


INFO_LINE = re.compile(r"^I\d{4} .*$", re.M)  # absl's format for an INFO record


def run_convert(*args):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-m", "codedance_jax.hf.convert", *args], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)


def test_binary_is_quiet_unless_asked_and_names_a_truncated_shard(tmp_path, hf_dir):
    quiet = run_convert(f"--hf_dir={hf_dir}", f"--out_dir={tmp_path / 'a'}")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert INFO_LINE.findall(quiet.stderr) == [], quiet.stderr[-2000:]
    assert f"converted {hf_dir} -> {tmp_path / 'a'}" in quiet.stdout
    verbose = run_convert(f"--hf_dir={hf_dir}", f"--out_dir={tmp_path / 'b'}", "--library_logs")
    assert verbose.returncode == 0 and any("orbax" in line for line in INFO_LINE.findall(verbose.stderr))
    shard = hf_dir / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    failed = run_convert(f"--hf_dir={hf_dir}", f"--out_dir={tmp_path / 'c'}")
    assert failed.returncode != 0 and f"{shard}: not a readable safetensors file" in failed.stderr


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_written_config_keeps_every_token_id_in_the_vocabulary(preset):
    """transformers warns at load time about a special token id outside the vocabulary; the demo's
    1024-id vocabulary must not inherit Qwen's 151643 as bos/eos when its config is written."""
    ours = get_preset(preset)
    hf_config = Qwen2_5_VLConfig(**ours.to_hf_dict())
    text = hf_config.get_text_config(decoder=True)
    token_ids = {name: getattr(config, name) for config in (hf_config, text) for name in config.to_dict()
                 if name.endswith("_token_id") and getattr(config, name) is not None}
    assert token_ids and all(0 <= value < text.vocab_size for value in token_ids.values()), token_ids
    assert ModelConfig.from_hf_dict(hf_config.to_dict()) == ours


@pytest.mark.parametrize("preset", ["3b", "7b", "32b"])
def test_key_table_covers_the_transformers_model(preset):
    """Every tensor of a real transformers model (built on the meta device) maps with its shape."""
    ours = get_preset(preset)
    hf_config = Qwen2_5_VLConfig(**ours.to_hf_dict())
    assert ModelConfig.from_hf_dict(hf_config.to_dict()) == ours
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(hf_config)
    expected = {canonical_hf_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if ours.tie_word_embeddings:
        expected.pop("lm_head.weight")  # tied: transformers does not write it
    index = hf_index(ours)
    assert sorted(index) == sorted(expected)
    for name, (rule, _) in index.items():
        assert rule.layout.hf_shape == expected[name], name
