"""Peak memory of the streaming HF -> orbax conversion, against the largest safetensors shard.

    python benchmarks/convert_memory.py [--layers=24 --hidden=512 --shard_mb=50]

Builds a random transformers Qwen2.5-VL (layer-heavy, so the shards are many and similar), saves
it sharded, converts it in a fresh process and prints that process's peak RSS growth during
`convert` next to the largest shard's size. The target is growth well under 2x the largest shard.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Samples resident memory in a thread while `convert` runs (ru_maxrss would include the
# transient peak of importing the libraries, which is larger than the conversion itself).
_MEASURE = """
import json, sys, threading, time
from codedance_jax.hf.convert import convert, limit_malloc_arenas
limit_malloc_arenas()  # as the binary does

def rss_mb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024

baseline, peak, done = rss_mb(), [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.005)
thread = threading.Thread(target=sample)
thread.start()
convert(sys.argv[1], sys.argv[2])
done.set()
thread.join()
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak[0]}))
"""


def measure(layers: int, hidden: int, shard_mb: int, workdir: str) -> dict:
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    from transformers import Qwen2_5_VLConfig
    from hf_reference import random_hf_model

    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=4096, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [hidden // 64, 3 * hidden // 128, 3 * hidden // 128]}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden,
                           fullatt_block_indexes=[1]))
    hf_dir, out_dir = os.path.join(workdir, "hf"), os.path.join(workdir, "ckpt")
    random_hf_model(config).save_pretrained(hf_dir, max_shard_size=f"{shard_mb}MB")
    shards = [os.path.getsize(os.path.join(hf_dir, n)) for n in os.listdir(hf_dir) if n.endswith(".safetensors")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, hf_dir, out_dir], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"conversion failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(model_mb=sum(shards) / 2**20, shards=len(shards), largest_shard_mb=max(shards) / 2**20)
    result["growth_mb"] = result["peak_mb"] - result["baseline_mb"]
    result["growth_over_largest_shard"] = result["growth_mb"] / result["largest_shard_mb"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--shard_mb", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.layers, args.hidden, args.shard_mb, tmp)
    print(f"model {r['model_mb']:.0f} MB in {r['shards']} shards (largest {r['largest_shard_mb']:.0f} MB)")
    print(f"convert peak RSS growth {r['growth_mb']:.0f} MB = {r['growth_over_largest_shard']:.2f}x the largest shard")


if __name__ == "__main__":
    main()
