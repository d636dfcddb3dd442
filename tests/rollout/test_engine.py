"""The engine end to end: real tiny model, real sandbox, tool turns with images in the live cache."""
import numpy as np
import torch

from codedance_jax.processing.chat import render_chat
from codedance_jax.processing.image import preprocess_images, resize_for_model
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
