"""Stage 4, sft: supervised fine-tuning with TRL's SFTTrainer: LoRA, DoRA, QLoRA or full.

The task checks the setup, then runs the training job (tasks/sft_training.py) in this process, or
under `accelerate launch` when `sft.num_processes > 1`, and returns what it trained, typed. Finished
weights are reused for the same data, base model and config; checkpoints let a re-run resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tasks.sft_training import check_training_setup, checkpoint_dir_for, launch_distributed, run_spec
from tunegate.caching import content_key
from tunegate.config import SFTConfig
from tunegate.models import ResolvedModel

if TYPE_CHECKING:  # the annotation only: importing tasks.prepare loads the data checks
    from tasks.prepare import Prepared


@task
def check_setup(cfg: SFTConfig) -> None:
    """Fail in seconds, before data work, when this machine or the pipeline cannot run the training config."""
    check_training_setup(cfg)


class Trained(BaseModel):
    """The SFT weights (an adapter, or the whole model for `full`), what they were trained on, and how it went."""

    model_config = ConfigDict(extra="forbid")
    method: str
    adapter: str | None
    model: str | None
    base: ResolvedModel
    data_hash: str
    train_loss: float
    final_loss: float | None
    loss_curve: list[tuple[int, float]]
    eval_loss_curve: list[tuple[int, float]]
    loss_plot: str
    steps: int
    stopped_early: bool
    resumed_from: str | None
    resumed_at_step: int
    seconds: float
    precision: str
    precision_reason: str
    cpu_matmul_gflops: dict | None
    gradient_checkpointing: bool
    gradient_checkpointing_reason: str
    lm_head: str
    lm_head_reason: str
    trainable_params: int
    input_tokens_per_step: int
    tokens_per_second: float | None
    gpu_memory_at_start_bytes: int | None
    peak_gpu_memory_bytes: int | None
    world_size: int


def _sft_cache_key(context, parameters) -> str:
    # The same data, base model and config reuse the finished weights.
    prepared, cfg = parameters["prepared"], parameters["cfg"]
    return content_key(Path(parameters["checkpoint_root"]).parent, prepared.data_hash, prepared.base.path,
                       cfg.model_dump_json())


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_sft_cache_key), persist_result=True)
def sft(prepared: Prepared, cfg: SFTConfig, out_dir: str, checkpoint_root: str,
        callbacks: list | None = None) -> Trained:
    """Fine-tune on the train split; eval loss on the held-out split when sft.eval_steps > 0.

    callbacks: Trainer callbacks of the caller (a sweep trial's pruner); they live in this process, so they need
    sft.num_processes 1. They are not part of the cache key: a callback that stops training raises, and a task that
    raised caches nothing."""
    if callbacks and cfg.num_processes > 1:
        raise ValueError("Trainer callbacks run in this process; sft.num_processes > 1 trains in others (accelerate)")
    base = prepared.base
    spec = {
        "base_model_path": base.path,
        "train": prepared.train,
        "eval": prepared.eval,
        "cfg": cfg.model_dump(),
        "out_dir": out_dir,
        "checkpoint_dir": str(checkpoint_dir_for(Path(checkpoint_root), base.path, cfg, prepared.data_hash)),
        "trust_remote_code": base.trust_remote_code,
    }
    Path(checkpoint_root).mkdir(parents=True, exist_ok=True)
    # Two runs started at once with the same model, config and data share the checkpoint folder: the second
    # waits here, then resumes from the first one's last checkpoint instead of writing into it at the same time.
    with FileLock(spec["checkpoint_dir"] + ".lock"):
        summary = launch_distributed(spec, cfg, Path(out_dir)) if cfg.num_processes > 1 else run_spec(spec, callbacks)
    return Trained(**summary, base=base, data_hash=prepared.data_hash)
