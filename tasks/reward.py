"""Stage: a reward model learned from the preference store (TRL RewardTrainer), registered with its accuracy.

    python -m tasks.reward BASE_MODEL_DIR STORE.jsonl OUT_DIR     # train and score one, no MLflow

A scalar head on a base model (the pipeline's by default; `reward.base_model`), LoRA adapters or a
full fine-tune (`reward.method`). The store is split by prompt: every pair of a held-out prompt is
scored, none trains, so the held-out pairwise accuracy (chosen scored above rejected; a tie counts as
a miss) says how the model ranks answers to prompts it never saw; it comes with a 95% Wilson
interval and the number of pairs. Registered as `<registered_model>-reward` in a run of
`<experiment>-reward` with the store version as its dataset input; the alias `current` moves to it
only when its accuracy reaches `reward.min_accuracy` (a worse model never replaces a better one). A
training that fails registers nothing: registration is the last step.

Refused before any work: a store too small to hold out `reward.min_holdout_pairs` pairs on prompts
of their own, and a base model transformers gives no scalar head. An empty store (no preferences at
all) skips the stage with a log line. Cached by content: an unchanged store, base model and config
reuse the trained and registered model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tasks.preferences import PreferenceStore
from tunegate.caching import content_key
from tunegate.config import RewardConfig, TrackingConfig
from tunegate.models import ResolvedModel, load_chat_tokenizer, resolve_base_model
from tunegate.preference_store import read_rows
from tunegate.reward_model import META, RewardScorer, check_scalar_head, encode, render_prompt
from tunegate.stats import wilson_interval

log = logging.getLogger(__name__)
REWARD_SUFFIX = "-reward"
CURRENT = "current"


class RewardModel(BaseModel):
    """The reward model this run uses: where it is, how well it ranks held-out pairs, and where it is registered."""

    model_config = ConfigDict(extra="forbid")
    skipped: bool = False
    skip_reason: str | None = None
    path: str | None = None
    base_model_path: str | None = None
    method: str | None = None
    store_version: int = 0
    pairs_train: int = 0
    pairs_heldout: int = 0
    prompts_train: int = 0
    prompts_heldout: int = 0
    pairs_too_long: int = 0
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    min_accuracy: float = 0.0
    steps: int = 0
    train_loss: float | None = None
    precision: str | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    registered_model: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def informative(self) -> bool:
        """Whether it ranks held-out pairs well enough to gate, reward RL and check raters."""
        return self.accuracy is not None and self.accuracy >= self.min_accuracy

    def why_not_informative(self) -> str:
        """Why the reward model may not gate, in one sentence."""
        if self.skipped:
            return f"no reward model: {self.skip_reason}"
        return (f"the reward model's held-out accuracy {self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] on "
                f"{self.pairs_heldout} pairs is below reward.min_accuracy {self.min_accuracy}: it cannot tell answers "
                "apart well enough to judge them")


def prompt_key(prompt: list[dict]) -> str:
    return " ".join(json.dumps(prompt, ensure_ascii=False).lower().split())


def split_by_prompt(rows: list[dict], cfg: RewardConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) with no prompt on both sides: the held-out prompts are a seeded hash order's first share."""
    prompts = sorted({prompt_key(r["prompt"]) for r in rows},
                     key=lambda k: hashlib.sha256(f"{cfg.seed}|{k}".encode()).hexdigest())
    heldout = set(prompts[:math.ceil(cfg.holdout_fraction * len(prompts))]) if len(prompts) > 1 else set()
    return ([r for r in rows if prompt_key(r["prompt"]) not in heldout],
            [r for r in rows if prompt_key(r["prompt"]) in heldout])


def check_store_size(train: list[dict], heldout: list[dict], cfg: RewardConfig, store_rows: int) -> None:
    """Refuse a store that cannot both train and hold out enough pairs on prompts of their own."""
    prompts = len({prompt_key(r["prompt"]) for r in train + heldout})
    if prompts < 2 or len(heldout) < cfg.min_holdout_pairs or not train:
        raise ValueError(
            f"reward: the preference store has {store_rows} pairs on {prompts} prompts; split by prompt that is "
            f"{len(train)} to train and {len(heldout)} held out, and reward.min_holdout_pairs is "
            f"{cfg.min_holdout_pairs}. A reward model's accuracy on fewer held-out pairs says nothing. Add preference "
            "data (data.preference_files, feedback pairs, reviewers' preferences), lower reward.min_holdout_pairs or "
            "raise reward.holdout_fraction, or drop the reward section.")


def pair_ids(tokenizer, rows: list[dict]) -> list[dict]:
    """Token ids of chosen and rejected, rendered as the reward model scores them (tunegate/reward_model.py)."""
    out = []
    for r in rows:
        prompt = render_prompt(tokenizer, r["prompt"])
        out.append({"chosen_ids": encode(tokenizer, prompt, r["chosen"]["content"]),
                    "rejected_ids": encode(tokenizer, prompt, r["rejected"]["content"])})
    return out


def train_reward_model(base_model_path: str, rows: list[dict], cfg: RewardConfig, out_dir: Path,
                       trust_remote_code: bool = False) -> dict:
    """Train on the train prompts' pairs, score the held-out prompts' pairs; return the summary (no MLflow)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig as TRLRewardConfig, RewardTrainer

    from tunegate.precision import choose_precision

    started = time.perf_counter()
    check_scalar_head(base_model_path, trust_remote_code)
    train, heldout = split_by_prompt(rows, cfg)
    check_store_size(train, heldout, cfg, len(rows))
    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    train_ids = [p for p in pair_ids(tokenizer, train[:cfg.max_pairs] if cfg.max_pairs else train)
                 if max(len(p["chosen_ids"]), len(p["rejected_ids"])) <= cfg.max_length]
    too_long = (min(len(train), cfg.max_pairs or len(train))) - len(train_ids)
    if not train_ids:
        raise ValueError(f"reward: every training pair is longer than reward.max_length={cfg.max_length} tokens")
    precision, why, _ = choose_precision(cfg.precision)
    # The new scalar head (and LoRA's A) draw from the global RNG before the Trainer seeds it: seeded here, the
    # same store trains the same reward model (unseeded, the demo's held-out accuracy ranged 0.73-0.85 run to run).
    set_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path, num_labels=1, dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
        trust_remote_code=trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = LoraConfig(task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                             target_modules=cfg.target_modules) if cfg.method == "lora" else None
    args = TRLRewardConfig(
        output_dir=str(out_dir / "checkpoints"), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=1, max_length=cfg.max_length,
        # TRL defaults to bf16 and gradient checkpointing: ~100x and ~30% slower on CPUs without native bf16
        bf16=precision == "bf16", fp16=precision == "fp16", gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), logging_steps=1, save_strategy="no", report_to=[], seed=cfg.seed,
        data_seed=cfg.seed)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_ids),
                            processing_class=tokenizer, peft_config=peft_config)
    log.info("reward model: %s on %s, %d train pairs (%d prompts), %d held out (%d prompts); precision %s (%s)",
             cfg.method, base_model_path, len(train_ids), len({prompt_key(r["prompt"]) for r in train}), len(heldout),
             len({prompt_key(r["prompt"]) for r in heldout}), precision, why)
    train_started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - train_started
    weights = out_dir / "reward_model"
    trainer.model.save_pretrained(str(weights))  # LoRA: the adapter with the `score` head (modules_to_save)
    tokenizer.save_pretrained(str(weights))
    (weights / "training_args.bin").unlink(missing_ok=True)
    (weights / META).write_text(json.dumps({"base_model_path": base_model_path, "method": cfg.method,
                                            "trust_remote_code": trust_remote_code}))
    scorer = RewardScorer(weights, cfg.max_length, cfg.score_batch_size)
    prompts = [render_prompt(scorer.tokenizer, r["prompt"]) for r in heldout]
    chosen = scorer.score(prompts, [r["chosen"]["content"] for r in heldout])
    rejected = scorer.score(prompts, [r["rejected"]["content"] for r in heldout])
    correct = int((chosen > rejected).sum())
    low, high = wilson_interval(correct, len(heldout))
    summary = {
        "path": str(weights), "base_model_path": base_model_path, "method": cfg.method,
        "pairs_train": len(train_ids), "pairs_heldout": len(heldout), "pairs_too_long": too_long,
        "prompts_train": len({prompt_key(r["prompt"]) for r in train}),
        "prompts_heldout": len({prompt_key(r["prompt"]) for r in heldout}),
        "accuracy": correct / len(heldout), "ci_low": low, "ci_high": high, "min_accuracy": cfg.min_accuracy,
        "steps": int(trainer.state.global_step), "train_loss": float(result.training_loss), "precision": precision,
        "seconds": round(time.perf_counter() - started, 1), "train_seconds": round(train_seconds, 1),
        "heldout_margins": [float(c - r) for c, r in zip(chosen, rejected)],
    }
    (out_dir / "reward_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def register_reward_model(tracking: TrackingConfig, store: PreferenceStore, summary: dict) -> dict:
    """A run in <experiment>-reward with the store version as input; a version of <registered_model>-reward."""
    import mlflow

    from tunegate.preference_store import store_dataset
    from tunegate.registry import connect, ensure_registered_model

    client, experiment_id = connect(tracking, tracking.experiment + REWARD_SUFFIX)
    name = tracking.registered_model + REWARD_SUFFIX
    metrics = {k: summary[k] for k in ("accuracy", "ci_low", "ci_high", "pairs_train", "pairs_heldout",
                                       "prompts_train", "prompts_heldout", "pairs_too_long", "train_loss", "seconds")}
    lineage = {"store.version": str(store.version), "store.run_id": str(store.run_id), "store.sha256": str(store.sha256),
               "base_model": summary["base_model_path"], "method": summary["method"],
               "accuracy": f"{summary['accuracy']:.4f} [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}] on "
                           f"{summary['pairs_heldout']} held-out pairs"}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-store-v{store.version}") as run:
        mlflow.log_metrics(metrics)
        mlflow.set_tags({f"lineage.{k}": v for k, v in lineage.items()})
        mlflow.log_artifacts(summary["path"], artifact_path="reward_model")
        mlflow.log_input(store_dataset(tracking, store.file, store.run_id), context="training",
                         tags={"version": str(store.version)})
    ensure_registered_model(client, name)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/reward_model", run_id=run.info.run_id,
                                          tags=lineage, description=f"reward model on preference store v{store.version}")
    if summary["accuracy"] >= summary["min_accuracy"]:
        client.set_registered_model_alias(name, CURRENT, str(version.version))
    return {"registered_model": name, "version": str(version.version), "run_id": run.info.run_id}


def current_reward_model(tracking: TrackingConfig, min_accuracy: float, out_dir: Path) -> RewardModel | None:
    """The registered `current` reward model, downloaded; None when there is none."""
    import mlflow

    from tunegate.registry import connect, get_alias

    client, _ = connect(tracking)
    version = get_alias(client, tracking.registered_model + REWARD_SUFFIX, CURRENT)
    if version is None:
        return None
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{version.run_id}/reward_model",
                                                dst_path=str(out_dir / f"reward-v{version.version}"))
    metrics = client.get_run(version.run_id).data.metrics
    meta = json.loads((Path(local) / META).read_text())
    return RewardModel(path=local, base_model_path=meta["base_model_path"], method=meta["method"],
                       accuracy=metrics["accuracy"], ci_low=metrics["ci_low"], ci_high=metrics["ci_high"],
                       pairs_heldout=int(metrics["pairs_heldout"]), min_accuracy=min_accuracy,
                       registered_model=version.name, version=str(version.version), run_id=version.run_id)


@task
def registered_reward_model(cfg: RewardConfig | None, tracking: TrackingConfig, out_dir: str) -> RewardModel:
    """For a flow that trains none (quantize): the reward model the registry calls `current`, or why there is none."""
    if cfg is None:
        return RewardModel(skipped=True, skip_reason="no `reward:` section in the config")
    found = current_reward_model(tracking, cfg.min_accuracy, Path(out_dir))
    return found or RewardModel(skipped=True, min_accuracy=cfg.min_accuracy, skip_reason=(
        f"no version of {tracking.registered_model}{REWARD_SUFFIX} has the alias `{CURRENT}`"))


def _reward_cache_key(context, parameters) -> str:
    store, model, cfg, tracking = (parameters[k] for k in ("store", "model", "cfg", "tracking"))
    root = Path(store.file).parent.parent.parent if store.file else Path("outputs")  # <output_dir>/<run>/preferences
    return content_key(root, str(store.sha256), model.path, cfg.model_dump_json() if cfg else "none",
                       tracking.tracking_uri, tracking.registered_model)


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_reward_cache_key), persist_result=True)
def reward_model(store: PreferenceStore, model: ResolvedModel, cfg: RewardConfig | None,
                 tracking: TrackingConfig) -> RewardModel:
    """Train the reward model on the store and register it; skipped, with a log line, without preferences."""
    if cfg is None or not store.rows:
        why = "no `reward:` section in the config" if cfg is None else "the preference store is empty"
        log.info("reward model skipped: %s", why)
        return RewardModel(skipped=True, skip_reason=why, min_accuracy=cfg.min_accuracy if cfg else 0.0)
    base = resolve_base_model(cfg.base_model) if cfg.base_model else model.path
    trust = model.trust_remote_code
    summary = train_reward_model(base, read_rows(store.file), cfg, Path(store.file).parent.parent / "reward", trust)
    registered = register_reward_model(tracking, store, summary)
    log.info("reward model %s v%s: held-out accuracy %.3f [%.3f, %.3f] on %d pairs (min %.2f), %.0f s",
             registered["registered_model"], registered["version"], summary["accuracy"], summary["ci_low"],
             summary["ci_high"], summary["pairs_heldout"], cfg.min_accuracy, summary["seconds"])
    return RewardModel(**{k: v for k, v in summary.items() if k != "heldout_margins"}, **registered,
                       store_version=store.version)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    out = train_reward_model(sys.argv[1], read_rows(sys.argv[2]), RewardConfig(), Path(sys.argv[3]))
    print(json.dumps({k: v for k, v in out.items() if k != "heldout_margins"}, indent=2))
