"""The HTML report in a real headless browser: items with their images, code, tool output and
verdicts; the correct / wrong / used-tools filters; no script errors. Trajectories come from the
engine with teacher-forced turns (one runs code in the sandbox and gets a crop back)."""
import os
import re
import shutil
import subprocess

import pytest

from codedance_jax.eval import predictions, registry, report, summary
from codedance_jax.eval.runner import Runner
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer
from models.qwen2_5_vl import Qwen2_5_VL
from rollout.engine import Engine, EngineConfig
from sandbox import InterpreterPool, IsolationUnavailable

BROWSERS = ("chromium-headless-shell", "chromium")
CROP = ("<think>Zoom in.</think>\n<code>\n```python\ncrop = input_image.crop((0, 0, 60, 60))\nprint(crop.size)\n"
        "crop\n```\n</code>")


def browser() -> str:
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found is None:
        pytest.skip("no headless Chromium (Debian chromium-headless-shell / chromium); `make browser-deps` installs it")
    return found


def dom(page: str, fragment: str = "") -> tuple[str, str]:
    result = subprocess.run([browser(), "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                             "--dump-dom", f"file://{page}{fragment}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


ITEM = re.compile(r'<section class="item \w+( hidden)?"[^>]*id="item-([^"]+)"')


def visible_items(html: str) -> list[str]:
    return [m.group(2) for m in ITEM.finditer(html) if not m.group(1)]


@pytest.fixture(scope="module")
def page(tiny_ckpt, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    benchmark = registry.get("synthetic:num=3")
    dataset = benchmark.read(None)
    first, second, third = dataset.items
    scripts = {first.id: [CROP, f"<think>Seen.</think>\n<answer>{first.gold}</answer><|im_end|>"],
               second.id: [f"<think>Guess.</think>\n<answer>not {second.gold}</answer><|im_end|>"],
               third.id: [f"<think>Plain.</think>\n<answer>{third.gold}</answer><|im_end|>"]}
    try:
        pool = InterpreterPool(num_workers=1, timeout_s=5.0, uid_base=1_800_000_000)
    except IsolationUnavailable as err:
        pytest.skip(str(err))
    with pool:
        engine = Engine(Qwen2_5_VL.from_checkpoint(tiny_ckpt), load_tokenizer(None), pool, EngineConfig(
            num_slots=2, max_context=512, prefill_chunk=64, decode_steps=8, max_turns=3, max_turn_tokens=64,
            max_tool_tokens=300, image_config=ImageProcessingConfig(max_pixels=50176)))
        path = predictions.shard_path(out, 0, 1)
        with predictions.PredictionWriter(path) as writer:
            Runner(engine, engine.tokenizer, benchmark, out, None).run(dataset.items, writer.write, scripts,
                                                                      progress=False)
    records = predictions.in_order(predictions.read_predictions(path), [item.id for item in dataset.items])
    result = summary.summarize(benchmark, dataset, records)
    report.write(os.path.join(out, "report.html"), result, records)
    return os.path.join(out, "report.html"), {r["id"]: r for r in records}, dataset.items


def test_tool_call_is_recorded_with_its_output_and_image(page):
    _, records, items = page
    record = records[items[0].id]
    assert record["correct"] and record["tool_calls"] == 1 and record["num_turns"] == 2
    tool = record["turns"][0]["tool"]
    assert tool["outcome"] == "ok" and tool["stdout"] == "(60, 60)\n" and len(tool["images"]) == 1
    assert "input_image.crop" in tool["code"]
    assert not records[items[1].id]["correct"] and records[items[2].id]["correct"]


def test_report_shows_every_item_with_images_code_and_verdicts(page):
    path, records, items = page
    html, log = dom(path)
    assert 'data-ready="1"' in html and "Uncaught" not in log
    assert re.search(r'<pre id="js-errors" class="hidden"></pre>', html)
    assert visible_items(html) == [item.id for item in items]
    assert html.count('alt="input image"') == 3 and html.count('alt="tool image 1"') == 1
    assert '<pre class="code">' in html and "input_image.crop((0, 0, 60, 60))" in html
    assert "(60, 60)" in html and "✓ correct" in html and "✗ wrong" in html
    assert 'src="data:image/jpeg;base64,' in html  # embedded: the page works offline


@pytest.mark.parametrize("name, expected", [("correct", [0, 2]), ("wrong", [1]), ("tools", [0]), ("all", [0, 1, 2])])
def test_filters_hide_the_other_items(page, name, expected):
    path, _, items = page
    html, log = dom(path, f"#filter={name}")
    assert f'data-filter="{name}"' in html and "Uncaught" not in log
    assert visible_items(html) == [items[k].id for k in expected]
    assert re.search(rf'<span id="shown-count">{len(expected)}</span>', html)
