"""Stage 5b, rl: RL against the reward model (TRL GRPOTrainer or RLOOTrainer), after dpo; off by default.

    python -m tasks.rl BASE_DIR POLICY_ADAPTER_DIR REWARD_MODEL_DIR TRAIN_JSONL OUT_DIR   # a short run, no Prefect

The policy is the pipeline's candidate so far: DPO's weights, or SFT's when DPO was skipped. It
samples `rl.num_generations` answers to each train-split prompt and is pushed towards the better
ones of each group (`rl.method`: grpo normalises rewards within the group, rloo subtracts the mean
of the other answers). Each answer's reward is a weighted sum, each part logged per step:
- reward_model: the registered reward model's score (tunegate/reward_model.py renders the text
  exactly as the reward model was trained on it);
- key_facts: share of the prompt's key facts the answer states (validate extracted them from the
  reference answer, as prepare hands them to the eval docs; plus eval.key_facts must_include terms);
- no_forbidden: 1 when the answer says none of rl.must_not_include (and eval.key_facts
  must_not_include) unless its reference does.
The last two are evals/tunegate_metrics.py's own checks, so RL optimises what the gate measures.

The KL reference is the policy RL starts from: with an adapter TRL keeps a frozen copy of it ("ref")
next to the trainable one, as DPO does; a full model gets a reference copy. The new weights go
where DPO's went (an adapter on the same base, or a whole model), so evaluate, register and export
read `Reinforced.policy` as they read DPO's result.

Refused before any work: no reward model, or one whose held-out accuracy is below
reward.min_accuracy (it would teach the policy noise); no train prompts. Without an `rl:` section
the stage is skipped with a log line.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tasks.dpo import Aligned
from tasks.prepare import Prepared
from tasks.reward import RewardModel
from tunegate.caching import content_key, file_sha256
from tunegate.config import KeyFactTerms, RLConfig

log = logging.getLogger(__name__)
COMPONENTS = ("reward_model", "key_facts", "no_forbidden")  # the reward functions' names, as TRL logs them


def check_reward_model(reward: RewardModel | None) -> None:
    """Refuse RL without a reward model that ranks held-out pairs at least as well as reward.min_accuracy."""
    if reward is None or reward.skipped:
        why = "there is none" if reward is None else reward.skip_reason
        raise ValueError(f"rl: RL needs a reward model whose held-out accuracy reaches reward.min_accuracy, and {why}. "
                         "Add preference data so the reward stage can train one, or drop the rl section.")
    if not reward.informative:
        raise ValueError(f"rl: {reward.why_not_informative()}; RL against it would train the policy on noise. "
                         "Add preference data, or lower reward.min_accuracy only if you trust the model.")


def train_prompts(train_file: str, clean_file: str | None, cfg: RLConfig, terms: KeyFactTerms | None) -> list[dict]:
    """Train-split prompts as TRL rows, each with the doc fields the key-fact and forbidden-term checks read."""
    facts = {}
    if clean_file:  # validate's clean rows carry the key facts of their reference answers
        with open(clean_file) as f:
            facts = {r["id"]: r.get("facts", []) for r in map(json.loads, f) if r.get("split") == "train"}
    terms = terms or KeyFactTerms()
    rows = []
    with open(train_file) as f:
        for rec in map(json.loads, f):
            rows.append({"prompt": rec["prompt"], "reference": rec["completion"][-1]["content"],
                         "facts": facts.get(rec["id"], []), "must_include": terms.must_include,
                         "must_not_include": sorted(set(cfg.must_not_include) | set(terms.must_not_include))})
    random.Random(cfg.seed).shuffle(rows)  # max_prompts takes a sample of the split, not its first file
    rows = rows[:cfg.max_prompts]
    if not rows:
        raise ValueError(f"rl: no train-split prompts in {train_file}: RL samples answers to them; nothing to train on")
    return rows


def reward_functions(scorer, metrics) -> list:
    """The three rewards as TRL calls them: (prompts, completions, dataset columns) -> one float per answer."""

    def answers(completions: list) -> list[str]:
        return [c[-1]["content"] if isinstance(c, list) else c for c in completions]

    def docs(reference, facts, must_include, must_not_include) -> list[dict]:
        return [{"reference": r, "facts": f, "must_include": i, "must_not_include": n}
                for r, f, i, n in zip(reference, facts, must_include, must_not_include)]

    def reward_model(prompts, completions, **_) -> list[float]:
        return scorer.score_messages(prompts, answers(completions)).tolist()

    def key_facts(prompts, completions, reference, facts, must_include, must_not_include, **_) -> list[float]:
        return [metrics.key_facts(a, d) for a, d in
                zip(answers(completions), docs(reference, facts, must_include, must_not_include))]

    def no_forbidden(prompts, completions, reference, facts, must_include, must_not_include, **_) -> list[float]:
        return [float(not metrics.forbidden_terms(a, d)) for a, d in
                zip(answers(completions), docs(reference, facts, must_include, must_not_include))]

    return [reward_model, key_facts, no_forbidden]


def step_logger():
    """A Trainer callback that logs each step's total reward, its parts and the KL as one line, and times each step
    (sampling, scoring and the update: TRL samples inside the step)."""
    from transformers import TrainerCallback

    class LogRewards(TrainerCallback):
        def __init__(self):
            self.step_seconds, self._last = [], None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.step_seconds.append(round(now - self._last, 3))
            self._last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                parts = ", ".join(f"{c} {logs.get(f'rewards/{c}/mean', float('nan')):.3f}" for c in COMPONENTS)
                log.info("rl step %d: reward %.3f (%s), kl %.4f", state.global_step, logs["reward"], parts,
                         logs.get("kl", 0.0))

    return LogRewards()


def publish(trainer, tokenizer, adapter: bool, target: Path) -> None:
    """Save the trained policy next to its final place, then rename it there: a crash leaves no half-written weights."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    if adapter:
        trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])  # not the frozen "ref" copy
    else:
        trainer.save_model(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def train_rl(base_model_path: str, policy: dict, reward_model_path: str, rows: list[dict], cfg: RLConfig,
             precision: str, out_dir: Path, trust_remote_code: bool = False) -> dict:
    """Sample, score and update for rl.max_steps steps; return the new weights' path and the reward curves."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from tasks.evaluate import load_metrics_module
    from tunegate.models import load_chat_tokenizer
    from tunegate.reward_model import RewardScorer

    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if policy["adapter"]:
        base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, policy["adapter"], is_trainable=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(policy["model"], dtype=dtype, trust_remote_code=trust_remote_code)
    scorer = RewardScorer(reward_model_path)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if cfg.method == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config_class(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",  # a few steps: a decaying rate would waste the last ones
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,  # TRL counts answers, not prompts
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        reward_weights=[cfg.reward_model_weight, cfg.key_facts_weight, cfg.no_forbidden_weight],
        disable_dropout=True,  # policy and reference must give the same log-probs for the same answer
        # TRL defaults to bf16 and gradient checkpointing: ~100x and ~30% slower on CPUs without native bf16
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
    )
    timer = step_logger()
    trainer = trainer_class(model=model, reward_funcs=reward_functions(scorer, load_metrics_module()), args=args,
                            train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[timer])
    reference = ("none (rl.beta is 0: no KL term)" if cfg.beta == 0 else
                 "frozen copy of the policy's adapter" if policy["adapter"] else "copy of the policy model")
    log.info("RL (%s) on %d prompts, %d answers each, %d prompts a step, beta %s; reward model %s; reference: %s",
             cfg.method, len(rows), cfg.num_generations, cfg.prompts_per_step, cfg.beta, reward_model_path, reference)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start

    weights_dir = out_dir / ("adapter" if policy["adapter"] else "model")
    publish(trainer, tokenizer, bool(policy["adapter"]), weights_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]

    def curve(key: str) -> list[tuple[int, float]]:
        return [(h["step"], float(h[key])) for h in history if key in h]

    components = {c: curve(f"rewards/{c}/mean") for c in COMPONENTS}
    steps = int(trainer.state.global_step)
    summary = {
        "skipped": False,
        "method": cfg.method,
        "adapter": str(weights_dir) if policy["adapter"] else None,
        "model": None if policy["adapter"] else str(weights_dir),
        "reference": reference,
        "prompts": len(rows),
        "steps": steps,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps, 1), 2),
        "step_seconds": timer.step_seconds,
        "reward_curve": curve("reward"),
        "component_curves": components,
        "kl_curve": curve("kl"),
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
        "components_first": {c: v[0][1] for c, v in components.items() if v},
        "components_last": {c: v[-1][1] for c, v in components.items() if v},
        "precision": precision,
        "seed": cfg.seed,
    }
    (out_dir / "rl_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class Reinforced(BaseModel):
    """The candidate's weights after RL (the input policy's when RL was skipped), with the reward curves."""

    model_config = ConfigDict(extra="forbid")
    skipped: bool
    skip_reason: str | None = None
    method: str | None = None
    adapter: str | None
    model: str | None
    aligned: Aligned
    reward_model: str | None = None
    reference: str | None = None
    prompts: int = 0
    steps: int = 0
    seconds: float = 0.0
    seconds_per_step: float | None = None
    step_seconds: list[float] = []
    reward_first: float | None = None
    reward_last: float | None = None
    components_first: dict[str, float] = {}
    components_last: dict[str, float] = {}
    reward_curve: list[tuple[int, float]] = []
    component_curves: dict[str, list[tuple[int, float]]] = {}
    kl_curve: list[tuple[int, float]] = []
    precision: str | None = None
    seed: int | None = None

    @property
    def policy(self) -> Aligned:
        """What evaluate, register and export read: DPO's result with RL's weights in place of its own."""
        return self.aligned if self.skipped else self.aligned.model_copy(update={
            "adapter": self.adapter, "model": self.model, "rl": self.model_dump(mode="json", exclude={"aligned"})})


def rl_dir(prepared: Prepared, out_dir: str | None) -> Path:
    """Where RL writes: out_dir, else <run>/rl beside prepare's <run>/data."""
    return Path(out_dir) if out_dir else Path(prepared.train).parent.parent / "rl"


def _rl_cache_key(context, parameters) -> str:
    aligned, reward, prepared, cfg = (parameters[k] for k in ("aligned", "reward", "prepared", "cfg"))
    terms = parameters.get("terms")
    weights = [file_sha256(p) for p in sorted(Path(aligned.weights).glob("*.safetensors"))]
    reward_weights = [file_sha256(p) for p in sorted(Path(reward.path).glob("*.safetensors"))] if (
        reward and reward.path) else []
    output_root = rl_dir(prepared, parameters.get("out_dir")).parent.parent  # <output_dir>/<run>/rl
    return content_key(output_root, file_sha256(prepared.train), file_sha256(prepared.validated.clean),
                       aligned.sft.base.path, *weights, *reward_weights,
                       cfg.model_dump_json() if cfg else "none", terms.model_dump_json() if terms else "none",
                       reward.model_dump_json() if reward else "none", aligned.sft.precision)


@task
def check_rl_reward(reward: RewardModel, cfg: RLConfig | None) -> None:
    """Fail right after the reward stage, before SFT, when RL is configured and the reward model may not train it."""
    if cfg is not None:
        check_reward_model(reward)


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_rl_cache_key), persist_result=True)
def rl(aligned: Aligned, reward: RewardModel | None, prepared: Prepared, cfg: RLConfig | None,
       out_dir: str | None = None, terms: KeyFactTerms | None = None) -> Reinforced:
    """RL on the train prompts against the reward model and the key-fact checks; skipped without an rl section.

    out_dir: default <run>/rl (next to prepare's <run>/data). terms: extra key-fact terms (e.g. the eval set's
    eval.key_facts["tunegate_domain"]); rl.must_not_include is always checked."""
    if cfg is None:
        log.info("RL skipped: no `rl:` section in the config")
        return Reinforced(skipped=True, skip_reason="no `rl:` section in the config", adapter=aligned.adapter,
                          model=aligned.model, aligned=aligned)
    check_reward_model(reward)
    rows = train_prompts(prepared.train, prepared.validated.clean, cfg, terms)
    policy = {"adapter": aligned.adapter, "model": aligned.model}
    summary = train_rl(aligned.sft.base.path, policy, reward.path, rows, cfg, aligned.sft.precision,
                       rl_dir(prepared, out_dir), aligned.sft.base.trust_remote_code)
    log.info("RL (%s): %d steps, %.1f s a step; mean reward %.3f -> %.3f", cfg.method, summary["steps"],
             summary["seconds_per_step"], summary["reward_first"], summary["reward_last"])
    return Reinforced(**summary, aligned=aligned, reward_model=f"{reward.registered_model} v{reward.version}"
                      if reward.registered_model else reward.path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    base_dir, adapter, reward_dir, train_file, out = sys.argv[1:6]
    config = RLConfig(max_steps=2, must_not_include=["ChatGPT", "OpenAI"])
    result = train_rl(base_dir, {"adapter": adapter, "model": None}, reward_dir,
                      train_prompts(train_file, None, config, None), config, "fp32", Path(out))
    print(json.dumps({k: v for k, v in result.items() if "curve" not in k}, indent=2))
