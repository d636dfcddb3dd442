"""How a config becomes a run: the architecture, batch split, data source and process group.
Shared by the training binaries and tools (which each define their own flags)."""
from __future__ import annotations

import jax

from codedance_jax.processing.tokenizer import packaged_test_tokenizer_dir
from models.qwen2_5_vl import ModelConfig, get_preset
from models.qwen2_5_vl.config import load_config


def model_config(config) -> ModelConfig:
    """The architecture (from the initial checkpoint when there is one, else the preset) and how
    to run it: compute dtype and attention path."""
    base = load_config(config.init_checkpoint) if config.init_checkpoint else get_preset(config.model_preset)
    return base.replace(dtype=config.dtype, attention_impl=config.attention_impl)


def tokenizer_files(config) -> str:
    """The directory of the run's tokenizer and processor files: the config's tokenizer, else the
    initial checkpoint's, else the packaged test tokenizer. The final export carries copies."""
    return config.tokenizer_dir or config.init_checkpoint or packaged_test_tokenizer_dir()


def micro_batch_rows(config, mesh) -> int:
    """Rows of one micro-batch on this process; refuses batch sizes the mesh cannot split."""
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum_steps "
                         f"{config.grad_accum_steps}")
    micro = config.batch_size // config.grad_accum_steps
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if micro % data_parallel:
        raise ValueError(f"micro-batch of {micro} rows (batch_size / grad_accum_steps) is not divisible by the "
                         f"data-parallel mesh size {data_parallel} (data x fsdp)")
    if micro % jax.process_count():
        raise ValueError(f"micro-batch of {micro} rows is not divisible by {jax.process_count()} processes")
    return micro // jax.process_count()


def data_source(config):
    """Random-access raw records: synthetic, a TFDS array_record build, or a record file."""
    data = config.data
    if data.source == "synthetic":
        from codedance_jax.data.synthetic import synthetic_records
        return synthetic_records(data.num_synthetic, seed=data.seed)
    if not data.source:
        raise ValueError("config.data.source is empty: give 'synthetic' or a .jsonl/.parquet record file")
    if data.tfds_dir:
        from codedance_jax.data.tfds_builder import build_array_record_dataset, open_data_source
        build_array_record_dataset(data.source, data.tfds_dir)
        return open_data_source(data.tfds_dir)
    from codedance_jax.data.records import read_raw_records
    return list(read_raw_records(data.source))


def initialize_distributed(config) -> None:
    """jax.distributed.initialize(), auto-detected on TPU pods or given explicitly by the config."""
    explicit = {}
    if config.coordinator_address:
        explicit = dict(coordinator_address=config.coordinator_address, num_processes=config.num_processes,
                        process_id=config.process_id)
    if jax.config.jax_platforms == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(**explicit)
