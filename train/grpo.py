"""GRPO of Qwen2.5-VL with sandboxed code execution and the tool-balancing (BAT) reward.

    python -m train.grpo --config=configs/grpo.py:tiny --workdir=/tmp/grpo          # synthetic, CPU
    python -m train.grpo --config=configs/grpo.py:7b --workdir=gs://bucket/rl \
        --config.init_checkpoint=/ckpt/sft_export --config.data.source=/data/codedance_rl.parquet

Initial weights come from a converted checkpoint or an SFT workdir's `export/`. Re-running with
the same workdir resumes parameters, optimizer, step and prompt position exactly; SIGTERM saves.
"""
from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from codedance_jax import mesh as mesh_lib
from codedance_jax import rewards as rewards_lib
from codedance_jax.data.rl_prompts import PromptIterator, decode_prompt, prompt_source, synthetic_prompt_source
from codedance_jax.logging_setup import quiet_library_logs
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer
from models.qwen2_5_vl import Qwen2_5_VL
from rollout import weights
from rollout.engine import Engine, EngineConfig
from rollout.sampling import SamplingParams
from train.experiment import initialize_distributed, micro_batch_rows, model_config, tokenizer_files
from train.grpo_trainer import GRPOStep
from train.loop import run_training
from train.policy_loss import PolicyLossConfig
from train.state import abstract_state, init_state, learning_rate_schedule, make_optimizer, state_shardings
from train.step import jit_grpo_step, jit_old_log_probs

PLOTTED = ("reward", "accuracy", "tool_call_rate", "tool_call_rate_easy", "tool_call_rate_hard",
           "tool_call_rate_hard_groups", "tool_call_rate_easy_groups",
           "val_accuracy", "val_tool_call_rate", "entropy", "clip_fraction", "response_length")


def check_config(config) -> None:
    """Refuses settings that cannot run, before anything is built."""
    if config.reward.kind not in rewards_lib.KINDS:
        raise ValueError(f"reward.kind={config.reward.kind!r} is not one of {rewards_lib.KINDS}")
    if config.reward.invalid not in ("raise", "skip"):
        raise ValueError(f"reward.invalid={config.reward.invalid!r} must be 'raise' or 'skip'")
    if config.grpo.group_size < 2:
        raise ValueError(f"grpo.group_size must be >= 2 (a group of one has no advantage), "
                         f"got {config.grpo.group_size}")
    if config.rollout.max_context > max(config.length_buckets):
        raise ValueError(f"rollout.max_context {config.rollout.max_context} exceeds the largest length bucket "
                         f"{max(config.length_buckets)}: a trajectory could not be trained on")
    if config.batch_size % config.grpo.num_minibatches:
        raise ValueError(f"{config.batch_size} trajectories per step (prompts_per_step x group_size) do not split "
                         f"into grpo.num_minibatches={config.grpo.num_minibatches}")
    if config.grpo.prompts_per_step % jax.process_count():
        raise ValueError(f"grpo.prompts_per_step={config.grpo.prompts_per_step} does not split over "
                         f"{jax.process_count()} processes (each rolls out whole groups)")
    local = config.batch_size // jax.process_count()
    if local % (config.grpo.num_minibatches * config.grad_accum_steps):
        raise ValueError(f"each process's {local} trajectories do not split into grpo.num_minibatches="
                         f"{config.grpo.num_minibatches} x grad_accum_steps={config.grad_accum_steps} micro-batches")


def load_prompts(source: str, num_synthetic: int, seed: int) -> list[dict]:
    if source == "synthetic":
        return synthetic_prompt_source(num_synthetic, seed)
    if not source:
        raise ValueError("config.data.source is empty: give 'synthetic' or a .jsonl/.parquet RL record file")
    return prompt_source(source)


def eval_benchmarks(config) -> list:
    """(Benchmark, Dataset) pairs from `eval_benchmarks`: comma-separated NAME[:option=value]@PATH
    (no @PATH for `synthetic`), read up front so a bad path fails before training starts."""
    from codedance_jax.eval import registry

    pairs = []
    for entry in filter(None, (e.strip() for e in config.eval_benchmarks.split(","))):
        spec, _, path = entry.partition("@")
        benchmark = registry.get(spec)
        pairs.append((benchmark, benchmark.read(path or None)))
    return pairs


def make_judge(config):
    if not config.reward.judge_url:
        return None
    from codedance_jax.rewards.judge import Judge, JudgeConfig
    return Judge(JudgeConfig(base_url=config.reward.judge_url, model=config.reward.judge_model,
                             timeout_s=config.reward.judge_timeout_s, cache_path=config.reward.judge_cache or None,
                             fallback_to_rules=config.reward.judge_fallback_to_rules))


def engine_config(config, image_config: ImageProcessingConfig) -> EngineConfig:
    r = config.rollout
    return EngineConfig(num_slots=r.num_slots, max_context=r.max_context, prefill_chunk=r.prefill_chunk,
                        decode_steps=r.decode_steps, max_turns=r.max_turns, max_turn_tokens=r.max_turn_tokens,
                        max_response_tokens=r.max_response_tokens, max_tool_tokens=r.max_tool_tokens,
                        max_images=r.max_images, image_config=image_config,
                        sampling=SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k))


def rollout_placement(config, model_cfg, mesh, abstract_params):
    """(engine mesh, train-state parameters -> sampling weights). One process samples on the
    training mesh in the configured layout; several each sample on their own devices with a
    gathered copy, so no collective runs during rollouts (rollout/weights.py says why)."""
    if jax.process_count() == 1:
        layout = weights.choose_layout(config.rollout.param_layout, abstract_params, model_cfg, mesh)
        logging.info("rollout weights: %s layout on the training mesh", layout)
        return mesh, lambda params: weights.sampling_params(params, model_cfg, mesh, layout)
    local_mesh = weights.host_mesh(mesh)
    logging.info("rollout weights: gathered copy on this host's mesh %s", dict(local_mesh.shape))
    return local_mesh, lambda params: weights.host_local(
        weights.sampling_params(params, model_cfg, mesh, "gathered"), local_mesh)


def main(argv):
    del argv
    quiet_library_logs()
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if config.distributed:
        initialize_distributed(config)
    config.batch_size = config.grpo.prompts_per_step * config.grpo.group_size
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    model_cfg = model_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    mesh_lib.check_model_fits_mesh(model_cfg.text.num_heads, model_cfg.text.num_kv_heads, mesh)
    micro_batch_rows(config, mesh)  # refuses batch splits the mesh cannot take
    loss_cfg = PolicyLossConfig(temperature=config.rollout.temperature or 1.0, **config.loss.to_dict())

    tokenizer = load_tokenizer(tokenizer_files(config))
    images = ImageProcessingConfig(min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    default_task = config.data.default_task or None
    prompts = PromptIterator(load_prompts(config.data.source, config.data.num_synthetic, config.data.seed),
                             seed=config.data.seed, default_task=default_task)
    eval_prompts = []
    if config.data.eval_source and config.eval_every:
        eval_prompts = [decode_prompt(raw, default_task) for raw in
                        load_prompts(config.data.eval_source, config.data.num_eval, config.data.eval_seed)]

    benchmarks = eval_benchmarks(config) if config.eval_every else []

    param_dtype = jax.numpy.dtype(config.param_dtype)
    tx = make_optimizer(config)
    shardings = state_shardings(model_cfg, tx, mesh, param_dtype)
    schedule = learning_rate_schedule(config)
    update_fn = jit_grpo_step(model_cfg, loss_cfg, tx, schedule, shardings, remat=config.remat,
                              num_blocks=jax.process_count(), loss_chunk=config.loss_chunk_tokens)
    old_log_probs_fn = None
    if config.grpo.num_minibatches > 1:
        old_log_probs_fn = jit_old_log_probs(model_cfg, shardings, temperature=loss_cfg.temperature,
                                             num_blocks=jax.process_count(), loss_chunk=config.loss_chunk_tokens)

    def fresh_state():
        return init_state(model_cfg, tx, shardings, seed=config.seed, param_dtype=param_dtype,
                          init_checkpoint=config.init_checkpoint)

    # The KL reference is the initial policy, frozen (rebuilt identically on resume).
    ref_params = fresh_state().params if loss_cfg.kl_coef else None

    from sandbox import InterpreterPool
    with InterpreterPool(num_workers=config.sandbox.num_workers, timeout_s=config.sandbox.timeout_s,
                         memory_mb=config.sandbox.memory_mb) as pool:
        logging.info("sandbox: %s", pool.isolation.describe())
        # The engine samples with the train state's parameters, passed per step; it holds none itself.
        abstract_model = Qwen2_5_VL.abstract(model_cfg, param_dtype)
        engine_mesh, sampling_weights = rollout_placement(config, model_cfg, mesh, abstract_model.params())
        engine = Engine(abstract_model, tokenizer, pool, engine_config(config, images), mesh=engine_mesh)
        grpo_step = GRPOStep(config, engine=engine, tokenizer=tokenizer, prompts=prompts, update_fn=update_fn,
                             mesh=mesh, image_config=images, ref_params=ref_params, old_log_probs_fn=old_log_probs_fn,
                             judge=make_judge(config), eval_prompts=eval_prompts,
                             eval_benchmarks=benchmarks, workdir=workdir, sampling_weights=sampling_weights)
        logging.info("mesh %s; %d prompts x %d samples per step", dict(mesh.shape), config.grpo.prompts_per_step,
                     config.grpo.group_size)
        run_training(config, workdir, model_cfg=model_cfg,
                     abstract_state=abstract_state(model_cfg, tx, shardings, param_dtype), fresh_state=fresh_state,
                     train_step=grpo_step, data_iterator=prompts, asset_dir=tokenizer_files(config), image_config=images,
                     evaluate=grpo_step.validate, plotted=PLOTTED,
                     progress_keys=("reward", "accuracy", "tool_call_rate"))


if __name__ == "__main__":
    # Flags are defined here, not on import, so tests can import this module next to the other
    # binaries (absl refuses a flag defined twice in one process).
    config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, "
                                    "e.g. configs/grpo.py:tiny; override fields with --config.x=y.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
