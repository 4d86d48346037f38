"""Stage 6c, reward: the registered reward model scores the candidate's and the champion's answers.

    reward: {}                                                  # in the config; trains and scores (tasks/reward.py)
    gate: {rules: [{task: reward, metric: win_rate, max_drop: 0.1}]}   # gate on it like on the judge

Every generation-task prompt both models answered (the eval suite's and the production set's) is
scored twice by the reward model: once with the candidate's answer, once with the champion's. The
result joins the evaluations as the task `reward`, with two per-sample metrics the gate's paired
tests read like any other:
- `win_rate`: 1 when the candidate's answer scores higher, 0.5 on a tie, 0 when lower (the champion
  0.5 throughout, as with the judge); its exact sign test p-value is reported;
- `reward`: each model's raw reward per prompt, so the gate's paired bootstrap on it is the mean
  reward margin with its interval.
A reward model whose held-out accuracy is below `reward.min_accuracy` never gates: its scores are
reported, but its rules are `uninformative`, and the note says which accuracy on how many pairs. Scoring is forward passes of
a scalar head, milliseconds a pair (bench/judge_speed.py compares it with the LLM judge).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from prefect import task

from tasks.evaluate import Comparison, answered_by_both
from tasks.reward import RewardModel
from tunegate.config import RewardConfig
from tunegate.reward_model import RewardScorer, render_prompt, unrender_chatml
from tunegate.stats import mcnemar_exact, paired_bootstrap

log = logging.getLogger(__name__)
TASK = "reward"


def scored_pairs(evals: Comparison) -> list[dict]:
    """Every generation-task doc both models answered: (task, doc id, rendered prompt, both answers)."""
    return [{"task": name, "doc_id": doc_id, "prompt": prompt, "candidate": new, "baseline": old}
            for name, cand, base in answered_by_both(evals.candidate.tasks, evals.baseline.tasks)
            for doc_id, prompt, new, old in zip(cand["doc_ids"], cand["prompts"], cand["answers"], base["answers"])]


def reward_prompt(scorer: RewardScorer, rendered: str) -> str:
    """An eval prompt as the reward model reads it: re-rendered with its own chat template when it is ChatML."""
    messages = unrender_chatml(rendered)
    return rendered if messages is None else render_prompt(scorer.tokenizer, messages)


def score_pairs(pairs: list[dict], rewarder: RewardModel, cfg: RewardConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """Reward of the candidate's and of the champion's answer to each pair's prompt, and the seconds loading took."""
    if not pairs:
        return np.zeros(0), np.zeros(0), 0.0
    started = time.perf_counter()
    scorer = RewardScorer(rewarder.path, cfg.max_length, cfg.score_batch_size)
    load_seconds = time.perf_counter() - started
    prompts = [reward_prompt(scorer, p["prompt"]) for p in pairs]
    both = scorer.score(prompts + prompts, [p["candidate"] for p in pairs] + [p["baseline"] for p in pairs])
    return both[:len(pairs)], both[len(pairs):], load_seconds


def outcomes(cand: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The candidate's result per prompt: 1 when its answer scores higher, 0.5 on a tie, 0 when lower."""
    return np.sign(cand - base) * 0.5 + 0.5


def reward_summary(cand: np.ndarray, base: np.ndarray, rewarder: RewardModel, seconds: float,
                   load_seconds: float = 0.0, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Win rate with its sign test, mean margin with a bootstrap interval, and the reward model's own accuracy.
    `seconds`: scoring, loading the reward model not included (that is `load_seconds`)."""
    margin = cand - base
    outcome = outcomes(cand, base)
    p_value, wins, losses = mcnemar_exact(margin)
    low, high, _ = paired_bootstrap(margin, n_bootstrap, seed, 0.05)
    n = len(margin)
    name = f"{rewarder.registered_model} v{rewarder.version}" if rewarder.version else (rewarder.path or "none")
    return {"reward_model": name,
            "accuracy": rewarder.accuracy, "accuracy_ci": [rewarder.ci_low, rewarder.ci_high],
            "heldout_pairs": rewarder.pairs_heldout, "min_accuracy": rewarder.min_accuracy,
            "informative": rewarder.informative, "pairs": n, "wins": wins, "losses": losses, "ties": n - wins - losses,
            "win_rate": float(outcome.mean()) if n else None, "sign_test_p": p_value,
            "mean_margin": float(margin.mean()) if n else None, "margin_ci": [low, high] if n else None,
            "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
            "ms_per_pair": round(1000 * seconds / n, 2) if n else None}


def with_reward(evals: Comparison, pairs: list[dict], cand: np.ndarray, base: np.ndarray, summary: dict,
                why_not: str | None) -> Comparison:
    """The evaluations with the task `reward` added to both models (no samples when the model may not gate)."""
    if why_not:
        pairs, cand, base = [], np.zeros(0), np.zeros(0)
    common = {"doc_ids": [f"{p['task']}/{p['doc_id']}" for p in pairs],
              "higher_is_better": {"win_rate": True, TASK: True}, "definition_hash": summary["reward_model"],
              "data_hash": evals.candidate.model_hash, "limit": None, "footing": {"reward_model": summary["reward_model"]},
              "strata": [p["task"] for p in pairs], "unmeasured": why_not}
    outcome = outcomes(cand, base).tolist()
    measured = bool(pairs)
    task_cand = {**common, "reward": summary, "samples": {"win_rate": outcome, TASK: cand.tolist()},
                 "metrics": {"win_rate": summary["win_rate"], TASK: float(cand.mean())} if measured else {}}
    task_base = {**common, "samples": {"win_rate": [0.5] * len(pairs), TASK: base.tolist()},
                 "metrics": {"win_rate": 0.5, TASK: float(base.mean())} if measured else {}}
    return evals.model_copy(update={
        "candidate": evals.candidate.model_copy(update={"tasks": {**evals.candidate.tasks, TASK: task_cand}}),
        "baseline": evals.baseline.model_copy(update={"tasks": {**evals.baseline.tasks, TASK: task_base}}),
    })


@task(name="reward")
def reward_eval(evals: Comparison, rewarder: RewardModel, cfg: RewardConfig | None) -> Comparison:
    """Add the reward model's win rate and reward margin to the evaluations; skipped without a `reward:` section."""
    if cfg is None:
        log.info("reward skipped: no `reward:` section in the config")
        return evals
    why_not = None if rewarder.informative else rewarder.why_not_informative()
    # A weak model's scores are shown (the summary, MLflow) but never given to the gate.
    pairs = scored_pairs(evals) if rewarder.path else []
    started = time.perf_counter()
    cand, base, load_seconds = score_pairs(pairs, rewarder, cfg)
    summary = reward_summary(cand, base, rewarder, time.perf_counter() - started - load_seconds, load_seconds)
    if why_not:
        log.warning("reward: the gate's reward rules are uninformative: %s", why_not)
    if pairs:
        log.info("reward %s: %d pairs in %.2f s after %.1f s loading (%s ms a pair), win rate %s (%d wins, %d ties, "
                 "%d losses, sign test p=%.3g), mean margin %s %s", summary["reward_model"], summary["pairs"],
                 summary["seconds"], load_seconds, summary["ms_per_pair"], summary["win_rate"], summary["wins"],
                 summary["ties"], summary["losses"], summary["sign_test_p"], summary["mean_margin"],
                 summary["margin_ci"])
    return with_reward(evals, pairs, cand, base, summary, why_not)
