"""RL prompts in the release's form: both file types, skips counted with their reasons and never
fatal, a resumable order, and clear errors naming the record and field."""
import io

import pytest
from PIL import Image

from codedance_jax.data.records import write_jsonl, write_parquet
from codedance_jax.data.rl_prompts import (PromptError, PromptIterator, decode_prompt, prompt_source,
                                           synthetic_prompt_source)


def png(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(out, format="PNG")
    return out.getvalue()


def record(i, **overrides):
    base = {"id": f"r{i}", "data_source": "chart",
            "prompt": [{"role": "system", "content": "Think, then answer."},
                       {"role": "user", "content": "<image>\nWhich bar is tallest?"}],
            "images": [png()], "reward_model": {"ground_truth": "B"},
            "extra_info": {"options": ["A", "B", "C"], "question": "Which bar is tallest?"}}
    base.update(overrides)
    return base


@pytest.mark.parametrize("writer,suffix", [(write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_release_form_reads_from_both_file_types(tmp_path, writer, suffix):
    path = str(tmp_path / f"rl{suffix}")
    writer([record(0), record(1, data_source="thinklite_eureka", reward_model={"ground_truth": "\\frac{1}{2}"})], path)
    first, second = (decode_prompt(raw) for raw in prompt_source(path))
    assert first.id == "r0" and first.task == "general" and second.task == "math"
    assert first.ground_truth == "B" and first.options == ["A", "B", "C"]
    assert first.question == "Which bar is tallest?" and first.images[0].size == (56, 56)
    assert [m["role"] for m in first.messages] == ["system", "user"]


def test_messages_form_drops_a_trailing_reference_answer_and_takes_a_top_level_ground_truth():
    raw = {"id": "m", "data_source": "vstar", "messages": [{"role": "user", "content": "How many?"},
                                                           {"role": "assistant", "content": "<answer>3</answer>"}],
           "ground_truth": 3}
    prompt = decode_prompt(raw)
    assert prompt.messages == [{"role": "user", "content": "How many?"}] and prompt.ground_truth == 3
    assert prompt.question == "How many?"


@pytest.mark.parametrize("overrides,reason,field", [
    (dict(reward_model={}), "no_ground_truth", "reward_model.ground_truth"),
    (dict(reward_model={"ground_truth": "  "}), "no_ground_truth", "reward_model.ground_truth"),
    (dict(data_source="mystery"), "unknown_data_source", "data_source"),
    (dict(images=[b"not an image"]), "bad_images", "images[0]"),
    (dict(images=[]), "bad_images", "images"),
    (dict(prompt=[{"role": "narrator", "content": "hi"}]), "bad_messages", "messages[0]"),
])
def test_bad_records_name_the_record_and_field(overrides, reason, field):
    with pytest.raises(PromptError) as caught:
        decode_prompt(record(7, **overrides))
    assert caught.value.reason == reason
    assert "record r7" in str(caught.value) and field in str(caught.value)


def test_unknown_source_is_scored_by_a_configured_default_task():
    assert decode_prompt(record(0, data_source="mystery"), default_task="math").task == "math"


def test_iterator_skips_and_counts_bad_records_and_resumes_exactly():
    source = [record(i) for i in range(6)] + [record(6, reward_model={}), record(7, data_source="mystery")]
    prompts = PromptIterator(source, seed=3)
    taken = [p.id for p in prompts.next_prompts(5)]
    state = prompts.get_state()
    after = [p.id for p in prompts.next_prompts(7)]  # crosses into the second epoch
    assert len(set(taken)) == 5 and set(taken) | set(after) == {f"r{i}" for i in range(6)}
    assert sum(prompts.skipped.values()) >= 2 and set(prompts.skipped) <= {"no_ground_truth", "unknown_data_source"}

    resumed = PromptIterator(source, seed=3)
    resumed.set_state(state)
    assert [p.id for p in resumed.next_prompts(7)] == after


def test_a_source_with_no_usable_record_is_an_error():
    with pytest.raises(ValueError, match="no usable prompt"):
        PromptIterator([record(0, reward_model={}), record(1, data_source="mystery")], seed=0).next_prompts(1)
    with pytest.raises(ValueError, match="empty"):
        PromptIterator([], seed=0)


def test_synthetic_prompts_are_questions_with_ground_truths():
    prompts = [decode_prompt(raw) for raw in synthetic_prompt_source(4, seed=0)]
    assert all(p.task == "general" and p.ground_truth and len(p.images) == 1 for p in prompts)
    assert all([m["role"] for m in p.messages] == ["user"] for p in prompts)
    assert all(p.difficulty in ("easy", "hard") for p in prompts)
