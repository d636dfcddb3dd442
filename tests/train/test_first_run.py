"""A newcomer's first run: the SFT binary on the demo preset, then `rollout.answer` given only the
export. The export carries the tokenizer the run used (so no tokenizer flag and no warning), an
export written on two devices loads on one, and neither binary prints library INFO logs."""
import filecmp
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from codedance_jax.processing.image import ImageProcessingConfig
from configs.sft import DEMO_TOKENIZER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ABSL_LINE = re.compile(r"^([IWE])\d{4} .* (\S+\.py):\d+\] (.*)$", re.M)  # absl's record format
# transformers' own handler; whether its records also reach absl's handler differs between machines.
TRANSFORMERS_LINE = re.compile(r"^\[transformers\] .*$", re.M)


def run(module, *args, devices):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow  # about a minute on two cores
def test_sft_export_answers_with_no_tokenizer_flag_and_no_library_logs(tmp_path):
    workdir = tmp_path / "sft"
    sft = run("train.sft", "--config=configs/sft.py:demo", f"--workdir={workdir}", "--config.total_steps=1",
              "--config.batch_size=2", "--config.mesh_shape=(1,2,1)", "--config.data.max_pixels=12544",
              "--config.length_buckets=(768,)", "--config.data.num_synthetic=4", devices=2)
    logged = ABSL_LINE.findall(sft.stderr)
    assert [(level, source) for level, source, _ in logged] == [("I", "sft.py")], logged  # the project's own
    export = workdir / "export"
    tokenizer_dir = DEMO_TOKENIZER
    copied = sorted(os.listdir(tokenizer_dir))
    assert filecmp.cmpfiles(tokenizer_dir, export, copied, shallow=False)[0] == copied

    image = tmp_path / "photo.png"
    Image.new("RGB", (140, 112), (200, 120, 40)).save(image)
    answer = run("rollout.answer", f"--ckpt_dir={export}", f"--image={image}", "--question=What is shown?",
                 "--max_context=512", "--prefill_chunk=64", "--decode_steps=8", "--max_turn_tokens=4", devices=1)
    assert ABSL_LINE.findall(answer.stderr) == [], answer.stderr[-3000:]
    assert TRANSFORMERS_LINE.findall(sft.stderr + answer.stderr) == []
    assert "finish reason: turn_token_limit" in answer.stdout
    # The export says the image budget the run trained with, and the answer binary uses it:
    # 140x112 px at 12544 px max is 112x84 px, 12 tokens (20 at the default budget).
    assert ImageProcessingConfig.for_checkpoint(str(export)).max_pixels == 12544
    assert "<|image_pad|>x12<|vision_end|>" in answer.stdout, answer.stdout
