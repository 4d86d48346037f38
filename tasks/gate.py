"""Stage 8, gate: per-task rules on the candidate against the champion (the base model for the first one).

Each rule compares the two models' per-sample scores on the same docs (a paired comparison):
McNemar's exact test when every score is 0 or 1, a paired bootstrap otherwise. A task
*regresses* when it moves in the bad direction by more than the rule's `max_drop` and the
two-sided p-value is below `gate.alpha` (not noise), or when the candidate misses an absolute
limit (`min_score` / `max_score`). It *improves* on the same terms in the good direction, and is
*unchanged* otherwise. The first model, with no champion, meets the same rules against the base
model. The paired test covers sampling noise of the eval set; `max_drop` must cover the spread
between training seeds (bench/gate_false_blocks.py measures it).

The decision table goes to MLflow (log_table, JSON, markdown), to tags on the model version and
to a Prefect markdown artifact.
"""

from __future__ import annotations

import math

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tunegate.config import GateConfig, GateRule, TrackingConfig

# What must match for two per-task evaluations to be compared sample by sample.
SAME_FOOTING = ("definition_hash", "data_hash", "limit", "footing", "doc_ids")


class GateError(ValueError):
    """The candidate and baseline evaluations cannot be compared under a rule."""


def paired_bootstrap(gain: np.ndarray, n_resamples: int, seed: int, alpha: float) -> tuple[float, float, float]:
    """Percentile interval of mean(gain), and the two-sided bootstrap p-value that the mean is 0."""
    rng = np.random.default_rng(seed)
    n = len(gain)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # resample in blocks of ~2M indices (16 MB), whatever the eval size
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = gain[rng.integers(0, n, size=(size, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    tail = min((means <= 0).sum(), (means >= 0).sum())
    return float(low), float(high), min(1.0, 2 * (int(tail) + 1) / (n_resamples + 1))


def mcnemar_exact(gain: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar p-value from paired 0/1 outcomes; also (wins, losses) of the candidate."""
    wins, losses = int((gain > 0).sum()), int((gain < 0).sum())
    n = wins + losses
    if n == 0:
        return 1.0, 0, 0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n), wins, losses


def judge_rule(rule: GateRule, cand_task: dict, base_task: dict, cfg: GateConfig) -> dict:
    for key in SAME_FOOTING:
        if cand_task[key] != base_task[key]:
            raise GateError(f"{rule.task}: candidate and baseline were not evaluated on the same footing ({key})")
    if rule.metric not in cand_task["samples"]:
        raise GateError(f"{rule.task}/{rule.metric}: lm-eval gave no per-sample scores to compare (a corpus-level "
                        "metric); gate on a per-sample metric of this task")
    higher_is_better = (
        rule.higher_is_better if rule.higher_is_better is not None else cand_task["higher_is_better"][rule.metric]
    )
    sign = 1.0 if higher_is_better else -1.0
    cand_s = np.asarray(cand_task["samples"][rule.metric], dtype=float)
    base_s = np.asarray(base_task["samples"][rule.metric], dtype=float)
    gain = sign * (cand_s - base_s)  # per doc, > 0 means the candidate is better
    binary = bool(np.isin(cand_s, (0.0, 1.0)).all() and np.isin(base_s, (0.0, 1.0)).all())
    test = rule.test if rule.test != "auto" else ("mcnemar" if binary else "bootstrap")
    if test == "mcnemar" and not binary:
        raise GateError(f"{rule.task}/{rule.metric}: McNemar needs 0/1 scores; use test: bootstrap")
    low, high, p_value = paired_bootstrap(gain, cfg.n_bootstrap, cfg.seed, cfg.alpha)
    detail = f"n={len(gain)}"
    if test == "mcnemar":
        p_value, wins, losses = mcnemar_exact(gain)
        detail += f", {wins} better, {losses} worse"

    cand, base = cand_task["metrics"][rule.metric], base_task["metrics"][rule.metric]
    move = sign * (cand - base)  # > 0: better
    significant = p_value < cfg.alpha
    where = f"p={p_value:.3g} {'<' if significant else '>='} {cfg.alpha}"
    reasons = []
    if move < -rule.max_drop and significant:
        reasons.append(f"worse by {-move:.4f} > allowed {rule.max_drop}, {where}")
    if rule.min_score is not None and cand < rule.min_score:
        reasons.append(f"score {cand:.4f} < minimum {rule.min_score}")
    if rule.max_score is not None and cand > rule.max_score:
        reasons.append(f"score {cand:.4f} > maximum {rule.max_score}")
    if reasons:
        verdict, note = "regressed", "; ".join(reasons)
    elif move > rule.max_drop and significant:
        verdict, note = "improved", f"better by {move:.4f} > {rule.max_drop}, {where}"
    else:
        verdict, direction = "unchanged", "better" if move > 0 else "worse"
        if abs(move) > rule.max_drop:
            note = f"{direction} by {abs(move):.4f}, but {where}: noise"
        elif significant and move != 0:
            note = f"{direction} by {abs(move):.4f} ({where}), within the allowed {rule.max_drop}"
        else:
            note = where
    ci_low, ci_high = sorted((sign * low, sign * high))  # the interval of the delta, in metric units
    limits = (f", min={rule.min_score}" if rule.min_score is not None else "") + (
        f", max={rule.max_score}" if rule.max_score is not None else "")
    return {
        "task": rule.task,
        "metric": rule.metric,
        "higher_is_better": higher_is_better,
        "baseline_score": round(base, 6),
        "candidate_score": round(cand, 6),
        "delta": round(cand - base, 6),
        "ci_low": round(ci_low, 6),
        "ci_high": round(ci_high, 6),
        "p_value": round(p_value, 6),
        "test": f"{test} ({detail})",
        "rule": f"{'higher' if higher_is_better else 'lower'} is better, max_drop={rule.max_drop}{limits}",
        "verdict": verdict,
        "note": note,
    }


def decide(cfg: GateConfig, candidate_eval: dict, baseline_eval: dict) -> dict:
    rows = [judge_rule(r, candidate_eval["tasks"][r.task], baseline_eval["tasks"][r.task], cfg) for r in cfg.rules]
    regressed = list(dict.fromkeys(r["task"] for r in rows if r["verdict"] == "regressed"))
    return {
        "passed": not regressed,
        "regressed": regressed,
        "improved": list(dict.fromkeys(r["task"] for r in rows if r["verdict"] == "improved")),
        "baseline": baseline_eval["label"],
        "first_model": baseline_eval["version"] is None,
        "alpha": cfg.alpha,
        "rows": rows,
    }


def decision_markdown(decision: dict, version: str) -> str:
    head = "PASSED" if decision["passed"] else f"BLOCKED ({', '.join(decision['regressed'])})"
    against = (
        "the base model (first model: no champion yet; the same rules and the absolute limits apply)"
        if decision["first_model"] else decision["baseline"]
    )
    lines = [
        f"# Gate: {head}",
        f"Candidate version {version} against {against}. Delta is candidate minus baseline; the interval is "
        f"its {1 - decision['alpha']:.0%} paired-bootstrap interval; p is the two-sided p-value of the paired test.",
        "",
        f"| task | metric | {decision['baseline']} | candidate | delta | {1 - decision['alpha']:.0%} CI | p | test "
        "| rule | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decision["rows"]:
        verdict = f"**{r['verdict']}**" if r["verdict"] == "regressed" else r["verdict"]
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['baseline_score']:.4f} | {r['candidate_score']:.4f} | "
            f"{r['delta']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3g} | {r['test']} | "
            f"{r['rule']} | {verdict}: {r['note']} |"
        )
    return "\n".join(lines)


@task
def gate(cfg: GateConfig, candidate_eval: dict, baseline_eval: dict, registered: dict, tracking: TrackingConfig) -> dict:
    """Judge every rule; record the table in MLflow, on the model version and in Prefect."""
    import mlflow

    from tunegate.registry import connect

    decision = decide(cfg, candidate_eval, baseline_eval)
    markdown = decision_markdown(decision, registered["version"])
    client, _ = connect(tracking)
    run_id, name, version = registered["run_id"], registered["model_name"], registered["version"]
    outcome = "passed" if decision["passed"] else "blocked"
    table = {key: [row[key] for row in decision["rows"]] for key in decision["rows"][0]}
    mlflow.log_table(data=table, artifact_file="gate/decision_table.json", run_id=run_id)
    client.log_dict(run_id, decision, "gate/decision.json")
    client.log_text(run_id, markdown, "gate/decision.md")
    client.set_tag(run_id, "gate", outcome)
    for row in decision["rows"]:
        client.set_model_version_tag(
            name, version, f"gate.{row['task']}.{row['metric']}",
            f"{row['verdict']}: delta {row['delta']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}], "
            f"p={row['p_value']:.3g}; {row['note']}",
        )
    client.set_model_version_tag(name, version, "gate.baseline", decision["baseline"])
    client.set_model_version_tag(name, version, "gate.regressed", ",".join(decision["regressed"]))
    client.set_model_version_tag(name, version, "gate", outcome)
    create_markdown_artifact(markdown=markdown, key="gate-decision", description="Promotion gate decision")
    decision["markdown"] = markdown
    return decision
