"""Time per GRPO step (rollout, scoring, update) of ours vs a transformers + torch GRPO loop.

    python benchmarks/grpo_step.py [--prompts=4] [--group=4] [--new_tokens=32] [--steps=3]

Both start from one random transformers model of tests/hf_reference.tiny_hf_config (text hidden
64, 3 layers, 152k vocabulary, vision depth 4; ours loads it through `convert`), take the same
synthetic prompts (one image each), sample `group` completions of up to `new_tokens` tokens per
prompt at temperature 1, score them with the same reward (codedance_jax.rewards, BAT) and make
one AdamW update with the GRPO loss (token-mean, ratio against the detached current policy).

The peer is the loop TRL's GRPOTrainer runs, written out with transformers and torch
(`generate(num_return_sequences=group)` per prompt, a padded forward for the log-probs,
backward, clipping, AdamW): TRL itself is not used because its trainer does not run the
multi-turn sandboxed tool loop, and installing it pulls in packages this project does not need.
A random model almost never writes code, so this measures generation and update, not tools.
Steps alternate between ours and theirs, so both see the same load on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from codedance_jax import mesh as mesh_lib  # noqa: E402
from codedance_jax import rewards as rewards_lib  # noqa: E402
from codedance_jax.data.rl_prompts import PromptIterator, decode_prompt, synthetic_prompt_source  # noqa: E402
from codedance_jax.hf.convert import convert  # noqa: E402
from codedance_jax.processing.chat import render_chat  # noqa: E402
from codedance_jax.processing.image import ImageProcessingConfig, preprocess_images  # noqa: E402
from codedance_jax.processing.tokenizer import load_tokenizer  # noqa: E402
from configs.grpo import get_config  # noqa: E402
from hf_reference import random_hf_model, tiny_hf_config  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from models.qwen2_5_vl.config import load_config  # noqa: E402
from rollout.engine import Engine  # noqa: E402
from sandbox import InterpreterPool  # noqa: E402
from train.grpo import engine_config  # noqa: E402
from train.grpo_trainer import GRPOStep  # noqa: E402
from train.policy_loss import PolicyLossConfig  # noqa: E402
from train.state import init_state, learning_rate_schedule, make_optimizer, state_shardings  # noqa: E402
from train.step import jit_grpo_step  # noqa: E402

IMAGES = ImageProcessingConfig(max_pixels=50176)
LEARNING_RATE = 1e-5


def grpo_config(args):
    c = get_config("tiny")
    c.learning_rate, c.weight_decay = LEARNING_RATE, 0.0
    c.grpo.prompts_per_step, c.grpo.group_size = args.prompts, args.group
    c.batch_size = args.prompts * args.group
    r = c.rollout
    r.num_slots, r.max_turns = c.batch_size, 1
    r.max_turn_tokens = r.max_response_tokens = args.new_tokens
    r.max_context, c.length_buckets = 256, (256,)
    return c


class Ours:
    def __init__(self, ckpt_dir: str, args, pool, tokenizer):
        model_cfg = load_config(ckpt_dir)
        self.config = config = grpo_config(args)
        mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
        tx = make_optimizer(config)
        shardings = state_shardings(model_cfg, tx, mesh, np.float32)
        self.state = init_state(model_cfg, tx, shardings, seed=0, param_dtype=np.float32, init_checkpoint=ckpt_dir)
        update = jit_grpo_step(model_cfg, PolicyLossConfig(), tx, learning_rate_schedule(config), shardings,
                               remat=False, num_blocks=1, loss_chunk=config.loss_chunk_tokens)
        engine = Engine(Qwen2_5_VL.abstract(model_cfg), tokenizer, pool, engine_config(config, IMAGES))
        prompts = PromptIterator(synthetic_prompt_source(64, seed=0), seed=0)
        self.step = GRPOStep(config, engine=engine, tokenizer=tokenizer, prompts=prompts, update_fn=update, mesh=mesh,
                             image_config=IMAGES)

    def __call__(self) -> dict:
        self.state, metrics = self.step(self.state)
        return {k: metrics[k] for k in ("rollout_s", "scoring_s", "update_s", "step_s", "generated_tokens")}


class Theirs:
    """GRPO with transformers generate and a torch update, on the same prompts and reward."""

    def __init__(self, model, args, tokenizer):
        self.model, self.args, self.tokenizer = model, args, tokenizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        self.prompts = [decode_prompt(raw) for raw in synthetic_prompt_source(64, seed=0)]
        self.position = 0

    def _generate(self, prompt):
        chat = render_chat(prompt.messages, self.tokenizer, prompt.images, image_config=IMAGES,
                           add_generation_prompt=True)
        pixels, grids = preprocess_images(chat.images, IMAGES)
        ids = torch.tensor(chat.input_ids[None], dtype=torch.long)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.tensor(pixels),
                image_grid_thw=torch.tensor(grids), mm_token_type_ids=torch.tensor(chat.mm_token_type_ids[None]),
                do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=self.args.new_tokens,
                num_return_sequences=self.args.group, pad_token_id=self.tokenizer.pad_token_id)
        return chat, pixels, grids, out

    def __call__(self) -> dict:
        started = time.perf_counter()
        batch = self.prompts[self.position: self.position + self.args.prompts]
        self.position += self.args.prompts
        rollouts = [self._generate(p) for p in batch]
        rolled = time.perf_counter()
        items, sequences = [], []
        ends = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.pad_token_id}
        for group, (prompt, (chat, pixels, grids, out)) in enumerate(zip(batch, rollouts)):
            for row in out:
                completion = row[len(chat.input_ids):].tolist()
                # generate pads the shorter samples of a group: train up to the end token only, as ours does.
                completion = completion[: next((k + 1 for k, t in enumerate(completion) if t in ends), len(completion))]
                row = row[: len(chat.input_ids) + len(completion)]
                items.append(rewards_lib.RewardItem(self.tokenizer.decode(completion), prompt.ground_truth, group))
                sequences.append((row, len(chat.input_ids), pixels, grids, chat.mm_token_type_ids))
        advantages = rewards_lib.compute_rewards(items, "bat").advantages
        scored = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        total_tokens = sum(len(row) - start for row, start, *_ in sequences)
        for (row, start, pixels, grids, types), advantage in zip(sequences, advantages):
            token_types = torch.zeros(1, len(row), dtype=torch.long)
            token_types[0, :len(types)] = torch.tensor(types)
            logits = self.model(input_ids=row[None], pixel_values=torch.tensor(pixels),
                                image_grid_thw=torch.tensor(grids), mm_token_type_ids=token_types).logits
            log_probs = torch.log_softmax(logits[0, start - 1:-1].float(), -1).gather(-1, row[start:, None])[:, 0]
            loss = -(float(advantage) * torch.exp(log_probs - log_probs.detach())).sum() / total_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        done = time.perf_counter()
        return {"rollout_s": rolled - started, "scoring_s": scored - rolled, "update_s": done - scored,
                "step_s": done - started, "generated_tokens": float(total_tokens)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each, after one warm-up step")
    args = parser.parse_args()
    tokenizer = load_tokenizer()
    hf = random_hf_model(tiny_hf_config())
    with tempfile.TemporaryDirectory() as tmp, InterpreterPool(num_workers=2, timeout_s=15) as pool:
        hf.save_pretrained(os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        ours, theirs = Ours(os.path.join(tmp, "ckpt"), args, pool, tokenizer), Theirs(hf, args, tokenizer)
        ours(), theirs()  # warm-up (compilation)
        runs = {"ours": [], "theirs": []}
        for _ in range(args.steps):
            runs["ours"].append(ours())
            runs["theirs"].append(theirs())
    print(f"tiny model (text hidden 64, 3 layers, 152k vocab), {args.prompts} prompts x {args.group} samples, "
          f"up to {args.new_tokens} new tokens, median of {args.steps} steps each; peer: transformers generate + "
          f"torch update (TRL's GRPO loop written out; TRL's GRPOTrainer itself cannot run the multi-turn "
          f"sandboxed tool loop)")
    median = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}
    for name, m in median.items():
        print(f"  {name:6s}  step {m['step_s']:7.2f} s = rollout {m['rollout_s']:6.2f} + scoring {m['scoring_s']:5.3f}"
              f" + update {m['update_s']:6.2f}  ({m['generated_tokens']:.0f} generated tokens)")
    print(f"  ratio (theirs / ours): step {median['theirs']['step_s'] / median['ours']['step_s']:.2f}x, rollout "
          f"{median['theirs']['rollout_s'] / median['ours']['rollout_s']:.2f}x, update "
          f"{median['theirs']['update_s'] / median['ours']['update_s']:.2f}x")


if __name__ == "__main__":
    main()
