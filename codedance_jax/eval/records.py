"""A finished trajectory as a prediction record: the verdict, each assistant turn's text with its
tool call (code, outcome, output, images), token counts and why it ended. Images are saved as
small JPEGs under images/ (paths in the record are relative to the output folder) for the report."""
from __future__ import annotations

import hashlib
import os
import re

from PIL import Image

from codedance_jax import rewards
from codedance_jax.eval.items import Item
from codedance_jax.eval.scoring import Verdict
from rollout import trajectory as traj_lib

IMAGE_DIR = "images"
SKIPPED_REASONS = (traj_lib.FINISH_BAD_PROMPT,)  # the item's data could not be used (e.g. its image)


def _folder_name(item_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id)[:60]
    return f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"


def save_image(image: Image.Image, out_dir: str, item_id: str, name: str, max_side: int) -> str:
    relative = os.path.join(IMAGE_DIR, _folder_name(item_id), name + ".jpg")
    os.makedirs(os.path.dirname(os.path.join(out_dir, relative)), exist_ok=True)
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((max_side, max_side))
    thumbnail.save(os.path.join(out_dir, relative), format="JPEG", quality=85)
    return relative


def base_record(item: Item) -> dict:
    return {"id": item.id, "question": item.question, "gold": item.gold, "options": list(item.options),
            "fields": dict(item.fields)}


def skipped_record(item: Item, reason: str) -> dict:
    return {**base_record(item), "skipped": reason}


def trajectory_record(item: Item, trajectory, tokenizer, verdict_for, out_dir: str, image_side: int) -> dict:
    """verdict_for(response text) -> Verdict scores what the model generated."""
    if trajectory.finish_reason in SKIPPED_REASONS:
        return skipped_record(item, f"{trajectory.finish_reason}: {trajectory.finish_detail}")
    segments = rewards.generated_segments(trajectory.tokens, trajectory.loss_mask,
                                          lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
    response = rewards.extract.response_text(segments)
    verdict: Verdict = verdict_for(response)
    tool_images = sum(call.num_images for call in trajectory.tool_calls)
    inputs = len(trajectory.images) - tool_images
    record = base_record(item)
    if inputs:
        record["input_image"] = save_image(trajectory.images[0], out_dir, item.id, "input", image_side)
    turns, next_image = [], inputs
    for number, text in enumerate(segments):
        turn = {"text": text}
        if number < len(trajectory.tool_calls):
            call = trajectory.tool_calls[number]
            images = [save_image(trajectory.images[next_image + k], out_dir, item.id, f"call{number}_{k}", image_side)
                      for k in range(call.num_images)]
            next_image += call.num_images
            turn["tool"] = {"code": call.code, "outcome": call.outcome, "error": call.error, "stdout": call.stdout,
                            "stderr": call.stderr, "images": images, "notes": list(call.notes),
                            "duration_s": round(call.duration_s, 3)}
        turns.append(turn)
    return {**record, "response": response, "extracted": verdict.answer, "correct": verdict.correct,
            "decided_by": verdict.rule, "turns": turns, "num_turns": trajectory.num_turns,
            "tool_calls": len(trajectory.tool_calls),
            "tool_outcomes": [call.outcome for call in trajectory.tool_calls],
            "prompt_tokens": trajectory.prompt_length, "generated_tokens": int(sum(trajectory.loss_mask)),
            "total_tokens": len(trajectory.tokens), "finish_reason": trajectory.finish_reason,
            "finish_detail": trajectory.finish_detail}
