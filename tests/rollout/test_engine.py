"""The engine end to end: real tiny model, real sandbox, tool turns with images in the live cache."""
import numpy as np
import torch

from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import preprocess_images, resize_for_model
from rollout import sampler
from rollout import trajectory as traj_lib
from rollout.engine import Request
from rollout.sampling import SamplingParams
from rollout_helpers import noise_image, smooth_image

ATOL = 1e-4
CROP_SCRIPT = [
    "<think>The corner matters.</think>\n<code>\n```python\ncorner = input_image.crop((0, 0, 100, 80))\n"
    "print(corner.size)\ncorner\n```\n</code>",
    "<think>Seen it.</think>\n<answer>7</answer><|im_end|>",
]


def full_forward_log_probs(model, trajectory, images=None) -> np.ndarray:
    """log p(token i | tokens < i) from one full forward over the finished trajectory."""
    pixels, grids = preprocess_images(trajectory.images if images is None else images)
    logits = np.asarray(model(np.array([trajectory.tokens]), pixels, grids), np.float64)[0]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    tokens = np.array(trajectory.tokens)
    scored = np.zeros(len(tokens))
    scored[1:] = log_probs[np.arange(len(tokens) - 1), tokens[1:]]
    return scored


def test_scripted_crop_runs_in_the_sandbox_and_the_cache_matches_a_full_forward(make_engine, tiny_model,
                                                                                tokenizer):
    image = smooth_image(168, 224)
    engine = make_engine()
    [trajectory] = engine.generate([Request.from_question("What is in the corner?", image,
                                                          forced_turns=CROP_SCRIPT)])
    assert trajectory.finish_reason == traj_lib.FINISH_STOP and trajectory.num_turns == 2
    [call] = trajectory.tool_calls
    assert call.outcome == traj_lib.TOOL_OK and call.stdout == "(100, 80)\n" and call.num_images == 1

    # The sandbox cropped the image the model sees (JPEG round trip aside).
    crop = np.asarray(resize_for_model(image).crop((0, 0, 100, 80)), np.float32)
    tool_image = trajectory.images[1]
    assert tool_image.size == (100, 80)
    assert np.abs(np.asarray(tool_image, np.float32) - crop).mean() < 4
    assert trajectory.image_grid_thw.tolist() == [[1, 12, 16], [1, 6, 8]]

    # Loss mask: exactly the scripted tokens; the tool turn between them is not trained on.
    tokens, mask = np.array(trajectory.tokens), np.array(trajectory.loss_mask, bool)
    script_ids = sum((tokenizer(t, add_special_tokens=False)["input_ids"] for t in CROP_SCRIPT), [])
    assert tokens[mask].tolist() == script_ids
    response = tokenizer.decode(tokens[trajectory.prompt_length:].tolist())
    assert "</code><|im_end|>\n<|im_start|>user\n<tool_response>\nThe code ran without errors." in response
    assert response.endswith("<|im_start|>assistant\n<think>Seen it.</think>\n<answer>7</answer><|im_end|>")

    # Every recorded log-prob (from the cache path) equals the full forward over the trajectory.
    reference = full_forward_log_probs(tiny_model, trajectory)
    np.testing.assert_allclose(np.array(trajectory.log_probs)[mask], reference[mask], atol=ATOL, rtol=0)
    assert not np.any(np.array(trajectory.log_probs)[~mask])

    # The tool image's features reach the model: another image there changes the answer's log-probs.
    answer = mask & (np.arange(len(tokens)) > np.flatnonzero(~mask).max())
    altered = full_forward_log_probs(tiny_model, trajectory, [trajectory.images[0], noise_image(80, 100, seed=9)])
    assert np.abs(altered[answer] - reference[answer]).max() > 1e-3


def test_greedy_generation_equals_transformers_generate(hf_pair, make_engine, tokenizer):
    hf_model, _, _ = hf_pair(tie=True)
    image = noise_image(112, 140, seed=3)
    request = Request.from_question("Describe the image.", image, sampling=SamplingParams(temperature=0.0),
                                    stop_strings=())
    new_tokens = 20
    [trajectory] = make_engine(max_turn_tokens=new_tokens).generate([request])
    assert trajectory.finish_reason == traj_lib.FINISH_TURN_TOKENS

    rendered = render_chat(request.messages, tokenizer, request.images, add_generation_prompt=True)
    pixels, grids = preprocess_images(rendered.images)
    ids = torch.tensor(rendered.input_ids[None], dtype=torch.long)
    with torch.no_grad():
        generated = hf_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(grids), mm_token_type_ids=torch.tensor(rendered.mm_token_type_ids[None]),
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    expected = generated[0, ids.shape[1]:].tolist()
    assert trajectory.tokens[trajectory.prompt_length:] == expected


def _code_turn(code: str) -> str:
    return f"<code>\n```python\n{code}\n```\n</code>"


def test_failing_timing_out_and_unparsable_calls_become_error_turns(make_engine, tokenizer):
    script = [_code_turn("print('half way')\n1 / 0"), _code_turn("while True:\n    pass"),
              '<tool_call>{"name": "execute_python_code", "arguments": {"code": </tool_call>',
              _code_turn("print(2 + 2)"), "<answer>4</answer><|im_end|>"]
    [trajectory] = make_engine(max_turns=6, max_response_tokens=480, max_tool_tokens=400).generate(
        [Request.from_question("What is 2 + 2?", smooth_image(112, 112), forced_turns=script)])
    assert trajectory.finish_reason == traj_lib.FINISH_STOP and trajectory.num_turns == 5
    outcomes = [c.outcome for c in trajectory.tool_calls]
    assert outcomes == [traj_lib.TOOL_ERROR, traj_lib.TOOL_TIMEOUT, traj_lib.TOOL_PARSE_ERROR, traj_lib.TOOL_OK]
    assert trajectory.tool_calls[0].error.startswith("ZeroDivisionError")
    assert trajectory.tool_calls[0].stdout == "half way\n" and trajectory.tool_calls[3].stdout == "4\n"
    response = trajectory.response_text(tokenizer)
    assert "The code failed with ZeroDivisionError" in response and "Printed output:\nhalf way" in response
    assert "ran past the time limit" in response and "could not be run: invalid < tool_call>" in response


def test_bad_inputs_end_or_continue_a_trajectory_without_stopping_the_batch(make_engine, tokenizer):
    image = smooth_image(112, 112)
    thin_and_small = _code_turn("from PIL import Image\nImage.new('RGB', (3000, 10)).show()\n"
                                "Image.new('RGB', (40, 40), 'red')")
    requests = [
        Request.from_question("Draw?", image, forced_turns=["Here: <|vision_start|><|image_pad|> done"]),
        Request.from_question("word " * 600, image),
        Request.from_question("Print a lot.", image, forced_turns=[_code_turn("print('word ' * 3000)")]),
        Request.from_question("Shapes?", image, forced_turns=[thin_and_small, "<answer>red</answer><|im_end|>"]),
        Request.from_question("Loop?", image, forced_turns=[_code_turn(f"x = {i}") for i in range(5)]),
        Request.from_question("Too thin?", smooth_image(10, 3000)),
    ]
    vision, too_long, loud, shapes, looping, bad_image = make_engine().generate(requests)

    assert vision.finish_reason == traj_lib.FINISH_VISION_TOKEN
    kept = tokenizer("Here: ", add_special_tokens=False)["input_ids"]  # vision_start is dropped too
    assert vision.tokens[vision.prompt_length:] == kept and len(vision.log_probs) == len(vision.tokens)
    assert too_long.finish_reason == traj_lib.FINISH_PROMPT_TOO_LONG and too_long.response_length == 0
    assert loud.finish_reason == traj_lib.FINISH_TOOL_BUDGET and loud.tool_calls[0].outcome == traj_lib.TOOL_OK
    assert "needs" in loud.finish_detail and loud.loss_mask[-1] == 1  # nothing of the tool turn was added
    assert shapes.finish_reason == traj_lib.FINISH_STOP
    [call] = shapes.tool_calls
    assert call.num_images == 1 and "aspect ratio above 200" in call.stderr  # the sandbox's guards
    assert shapes.images[1].size == (112, 112) and shapes.image_grid_thw[1].tolist() == [1, 8, 8]
    assert looping.finish_reason == traj_lib.FINISH_MAX_TURNS and len(looping.tool_calls) == 4
    assert "This is your last turn" in looping.response_text(tokenizer)
    assert bad_image.finish_reason == traj_lib.FINISH_BAD_PROMPT and "shorter than 28" in bad_image.finish_detail


def test_no_recompiles_after_warm_up_and_samples_do_not_depend_on_the_batch(make_engine):
    """Varied prompts, images, crops and tool outputs reuse the warm-up's compilations, and a
    seeded request samples the same trajectory in another slot next to other requests."""
    engine = make_engine()
    sampled = Request.from_question("Tell me a story about a cat who finds a box.", seed=11)

    def scripted(image, question, crop, printed):
        code = _code_turn(f"print({printed})\ninput_image.crop({crop})")
        return Request.from_question(question, image, forced_turns=[code, "<answer>1</answer><|im_end|>"])

    warm = engine.generate([scripted(smooth_image(168, 224), "What is this?", (0, 0, 100, 80), "'x'"), sampled])
    compilations = sampler.compilations()
    varied = engine.generate([
        sampled,
        scripted(smooth_image(196, 196, seed=1), "Which colour covers most of the picture?", (10, 10, 70, 100),
                 "'y' * 40"),
        Request.from_question("Tell me a story about a dog.", seed=12),
        scripted(smooth_image(168, 196, seed=2), "Is it dark?", (0, 0, 90, 90), "sum(range(10))"),
    ])
    assert sampler.compilations() == compilations
    assert [t.finish_reason for t in varied] == [traj_lib.FINISH_TURN_TOKENS, traj_lib.FINISH_STOP,
                                                 traj_lib.FINISH_TURN_TOKENS, traj_lib.FINISH_STOP]
    assert varied[0].tokens == warm[1].tokens
    np.testing.assert_allclose(varied[0].log_probs, warm[1].log_probs, atol=1e-5)


def test_turn_synchronous_scheduling_gives_the_same_trajectories(make_engine):
    requests = [Request.from_question(f"Question {i}?", smooth_image(112, 140, seed=i), seed=i,
                                      forced_turns=[_code_turn(f"import time\ntime.sleep({0.1 * i})\nprint({i})")])
                for i in range(3)]
    overlapped = make_engine().generate(requests)
    synchronous_engine = make_engine(turn_synchronous=True)
    synchronous = synchronous_engine.generate(requests)
    assert synchronous_engine.stats.tool_wait_s > 0
    for a, b in zip(overlapped, synchronous):
        assert a.tokens == b.tokens and a.finish_reason == b.finish_reason == traj_lib.FINISH_TURN_TOKENS
        assert [c.stdout for c in a.tool_calls] == [c.stdout for c in b.tool_calls]
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
