"""Stage 8, gate: per-task rules on candidate vs baseline, with a paired bootstrap on per-sample scores.

A task regresses only when its move in the bad direction is larger than the rule's `max_drop`
and the 95% paired-bootstrap interval of that move lies entirely on the bad side (not noise).
The decision table goes to MLflow (artifact + table), to the version's tags, and to Prefect.
"""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tunegate.config import GateRule, TrackingConfig

N_BOOTSTRAP, ALPHA, SEED = 2000, 0.05, 0


def paired_bootstrap(candidate: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """95% interval of mean(candidate - baseline), and the one-sided p-value that it is <= 0."""
    diffs = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(SEED)
    means = diffs[rng.integers(0, len(diffs), size=(N_BOOTSTRAP, len(diffs)))].mean(axis=1)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high), float((means <= 0).mean())


def judge_rule(rule: GateRule, candidate_eval: dict, baseline_eval: dict) -> dict:
    cand_task, base_task = candidate_eval["tasks"][rule.task], baseline_eval["tasks"][rule.task]
    cand, base = cand_task["metrics"][rule.metric], base_task["metrics"][rule.metric]
    sign = 1.0 if rule.higher_is_better else -1.0
    # "improvement" is the move in the good direction, so one test serves both directions.
    low, high, p_not_better = paired_bootstrap(
        [sign * v for v in cand_task["samples"][rule.metric]], [sign * v for v in base_task["samples"][rule.metric]]
    )
    improvement = sign * (cand - base)
    reasons = []
    if -improvement > rule.max_drop and high < 0:
        reasons.append(f"dropped {-improvement:.4f} > allowed {rule.max_drop} (95% CI of change [{low:.4f}, {high:.4f}])")
    if rule.min_score is not None and cand < rule.min_score:
        reasons.append(f"score {cand:.4f} < minimum {rule.min_score}")
    if rule.max_score is not None and cand > rule.max_score:
        reasons.append(f"score {cand:.4f} > maximum {rule.max_score}")
    verdict = "regressed" if reasons else ("improved" if low > 0 else "no significant change")
    return {
        "task": rule.task,
        "metric": rule.metric,
        "higher_is_better": rule.higher_is_better,
        "baseline": round(base, 6),
        "candidate": round(cand, 6),
        "delta": round(cand - base, 6),
        "improvement_ci_low": round(low, 6),
        "improvement_ci_high": round(high, 6),
        "p_not_better": round(p_not_better, 4),
        "rule": f"max_drop={rule.max_drop}"
        + (f", min={rule.min_score}" if rule.min_score is not None else "")
        + (f", max={rule.max_score}" if rule.max_score is not None else ""),
        "verdict": verdict,
        "reasons": "; ".join(reasons),
    }


def decide(rules: list[GateRule], candidate_eval: dict, baseline_eval: dict) -> dict:
    rows = [judge_rule(rule, candidate_eval, baseline_eval) for rule in rules]
    regressed = [r["task"] for r in rows if r["verdict"] == "regressed"]
    return {"passed": not regressed, "regressed": regressed, "baseline": baseline_eval["label"], "rows": rows}


def decision_markdown(decision: dict, version: str) -> str:
    head = "PASSED" if decision["passed"] else f"BLOCKED ({', '.join(decision['regressed'])})"
    lines = [
        f"# Gate: {head}",
        f"Candidate version {version} vs {decision['baseline']}. Improvement CI is the 95% paired-bootstrap "
        "interval of the change in the good direction.",
        "",
        "| task | metric | baseline | candidate | delta | improvement 95% CI | p(not better) | rule | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decision["rows"]:
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['baseline']:.4f} | {r['candidate']:.4f} | {r['delta']:+.4f} | "
            f"[{r['improvement_ci_low']:+.4f}, {r['improvement_ci_high']:+.4f}] | {r['p_not_better']:.3f} | "
            f"{r['rule']} | {'**regressed**: ' + r['reasons'] if r['reasons'] else r['verdict']} |"
        )
    return "\n".join(lines)


@task
def gate(
    rules: list[GateRule], candidate_eval: dict, baseline_eval: dict, registered: dict, tracking: TrackingConfig
) -> dict:
    """Judge every rule; record the table in MLflow, on the model version and in Prefect."""
    import mlflow

    from tunegate.registry import connect

    decision = decide(rules, candidate_eval, baseline_eval)
    markdown = decision_markdown(decision, registered["version"])
    client, _ = connect(tracking)
    run_id, name, version = registered["run_id"], registered["model_name"], registered["version"]
    table = {key: [row[key] for row in decision["rows"]] for key in decision["rows"][0]}
    mlflow.log_table(data=table, artifact_file="gate/decision_table.json", run_id=run_id)
    client.log_dict(run_id, decision, "gate/decision.json")
    client.log_text(run_id, markdown, "gate/decision.md")
    client.set_tag(run_id, "gate", "passed" if decision["passed"] else "blocked")
    for row in decision["rows"]:
        client.set_model_version_tag(name, version, f"gate.{row['task']}", f"{row['verdict']} ({row['delta']:+.4f})")
    client.set_model_version_tag(name, version, "gate", "passed" if decision["passed"] else "blocked")
    create_markdown_artifact(markdown=markdown, key="gate-decision", description="Promotion gate decision")
    decision["markdown"] = markdown
    return decision
