"""Stage 8, gate: per-task rules on the candidate against the champion (the base model for the first one).

Each rule compares the two models' per-sample scores on the same docs (a paired comparison):
McNemar's exact test when every score is 0 or 1, a paired bootstrap otherwise. A task
*regresses* when it moves in the bad direction by more than the rule's `max_drop` and the
two-sided p-value is below `gate.alpha` (not noise), or when the candidate misses an absolute
limit (`min_score` / `max_score`). It *improves* on the same terms in the good direction, and is
*unchanged* otherwise. The first model, with no champion, meets the same rules against the base
model. The paired test covers sampling noise of the eval set; `max_drop` must cover the spread
between training seeds (bench/gate_false_blocks.py measures it).

What the gate cannot see, it says:
- **Minimal detectable effect** (MDE) per rule: the smallest true drop its paired test finds at
  `gate.alpha` with probability `gate.power` (80%), at this n and variance (`minimal_detectable_effect`).
  A rule blocks drops larger than both its MDE and its max_drop; smaller ones pass unseen.
- **Uninformative**: a metric constant over every sample of both models (e.g. 0.0 everywhere) cannot
  tell the models apart; the verdict is `uninformative`, not `unchanged`. It does not block unless
  `gate.block_uninformative`; a rule with an absolute limit still checks the limit.
- **Answer drift**: on generation tasks, the share of eval prompts whose answer changed materially
  (token F1 between the two models' answers < `gate.answer_drift_f1`), with the biggest changes;
  `gate.max_answer_drift` caps it against a champion.
- **Strata**: n and both scores per stratum (source file/language of the eval docs) for every rule.

The decision table goes to MLflow (log_table, JSON, markdown), to tags on the model version and
to a Prefect markdown artifact.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import Literal

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from tasks.evaluate import answered_by_both, load_metrics_module
from tasks.register import RegisteredVersion
from tunegate.config import GateConfig, GateRule, TrackingConfig
from tunegate.stats import mcnemar_exact, paired_bootstrap
from tunegate.traces import latest_human_feedback

# What must match for two per-task evaluations to be compared sample by sample.
SAME_FOOTING = ("definition_hash", "data_hash", "limit", "footing", "doc_ids")


class GateError(ValueError):
    """The candidate and baseline evaluations cannot be compared under a rule."""


def mcnemar_min_flips(alpha: float) -> int:
    """Fewest one-way flips (k losses, no wins) that McNemar's exact test calls significant: 2 * 0.5**k < alpha."""
    return math.floor(math.log2(2 / alpha)) + 1


def minimal_detectable_effect(test: str, gain: np.ndarray, cand_s: np.ndarray, base_s: np.ndarray, alpha: float,
                              power: float) -> float | None:
    """Smallest true mean drop the rule's paired test detects at alpha (two-sided) with the given power; None: none.

    bootstrap (normal approximation of the paired mean): (z[1-alpha/2] + z[power]) * sd(paired diffs) / sqrt(n);
    2.80 * sd / sqrt(n) at alpha 0.05 and 80% power. When the two models agree on every doc, the paired sd is 0
    and says nothing about a drop to come: the unpaired sd, sqrt(var(cand) + var(base)), stands in.
    mcnemar (Connor 1987): the smallest delta, in steps of 1/n, with
    n >= (z[1-alpha/2] * sqrt(pd) + z[power] * sqrt(pd - delta**2))**2 / delta**2, pd = max(discordant rate
    observed, delta), and never below mcnemar_min_flips(alpha) / n: the exact test needs that many one-way flips.
    """
    n = len(gain)
    if n < 2:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    if test == "mcnemar":
        discordant = float((gain != 0).mean())
        for k in range(mcnemar_min_flips(alpha), n + 1):
            delta = k / n
            pd = max(discordant, delta)
            if n * delta**2 >= (z[0] * math.sqrt(pd) + z[1] * math.sqrt(max(pd - delta**2, 0.0))) ** 2:
                return delta
        return None
    sd = float(np.std(gain, ddof=1))
    if sd == 0.0:
        sd = math.sqrt(float(np.var(cand_s, ddof=1) + np.var(base_s, ddof=1)))
    return (z[0] + z[1]) * sd / math.sqrt(n) if sd > 0 else None


def strata_table(strata: list[str], cand_s: np.ndarray, base_s: np.ndarray) -> list[dict]:
    """n, baseline and candidate mean per stratum, sorted by stratum."""
    labels = np.asarray(strata)
    return [
        {"stratum": str(label), "n": int((labels == label).sum()),
         "baseline": round(float(base_s[labels == label].mean()), 6),
         "candidate": round(float(cand_s[labels == label].mean()), 6)}
        for label in sorted(set(strata))
    ]


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
    if len(cand_s) == 0:
        return unmeasured_rule(rule, higher_is_better, cand_task.get("unmeasured"))
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

    mde = minimal_detectable_effect(test, gain, cand_s, base_s, cfg.alpha, cfg.power)
    constant = len(gain) > 0 and bool((cand_s == cand_s[0]).all() and (base_s == cand_s[0]).all())
    has_limit = rule.min_score is not None or rule.max_score is not None

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
    elif constant:
        seen = f"{float(cand_s[0]):g} on all {len(gain)} samples of both models: the comparison sees nothing"
        verdict, note = ("unchanged", f"{seen}; the absolute limit holds") if has_limit else ("uninformative", seen)
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
        "mde": None if mde is None else round(mde, 6),
        "n": len(gain),
        "verdict": verdict,
        "note": note,
        "strata": strata_table(cand_task.get("strata") or ["all"] * len(gain), cand_s, base_s),
    }


def unmeasured_rule(rule: GateRule, higher_is_better: bool, why: str | None = None) -> dict:
    """A rule over zero samples (no eval docs, a judge without a verdict, a reward model below its accuracy floor):
    uninformative, and no number is made up."""
    return {"task": rule.task, "metric": rule.metric, "higher_is_better": higher_is_better, "baseline_score": None,
            "candidate_score": None, "delta": None, "ci_low": None, "ci_high": None, "p_value": None,
            "test": "none (n=0)", "rule": f"{'higher' if higher_is_better else 'lower'} is better, "
            f"max_drop={rule.max_drop}", "mde": None, "n": 0, "verdict": "uninformative",
            "note": why or "no samples to compare (e.g. no eval docs, or a judge that gave no verdict on any pair)",
            "strata": []}


def fmt(value: float | None, spec: str) -> str:
    """A measured number, or n/a where nothing was measured."""
    return "n/a" if value is None else format(value, spec)


def excerpt(text: str, limit: int = 160, tail: bool = False) -> str:
    """One line of at most limit characters; chat-template markup (<|...|>) dropped. tail: keep the end."""
    flat = " ".join(re.sub(r"<\|[^|>]*\|>", " ", text).split())
    if len(flat) <= limit:
        return flat
    return "..." + flat[-(limit - 3):] if tail else flat[: limit - 3] + "..."


def answer_drift(cfg: GateConfig, candidate_eval: dict, baseline_eval: dict) -> dict:
    """Share of generation-task eval prompts whose answer changed materially, and the biggest changes."""
    token_f1 = load_metrics_module().token_f1
    tasks, changes = {}, []
    for name, cand, base in answered_by_both(candidate_eval["tasks"], baseline_eval["tasks"]):
        strata = cand.get("strata") or ["all"] * len(cand["answers"])
        drifted = 0
        for i, (new, old) in enumerate(zip(cand["answers"], base["answers"])):
            f1 = 1.0 if new.strip() == old.strip() else token_f1(new, old)
            if f1 < cfg.answer_drift_f1:
                drifted += 1
                changes.append({"task": name, "doc_id": cand["doc_ids"][i], "stratum": strata[i], "f1": round(f1, 4),
                                "prompt": excerpt(cand["prompts"][i], tail=True),
                                "baseline": excerpt(old, 300), "candidate": excerpt(new, 300)})
        tasks[name] = {"n": len(cand["answers"]), "drifted": drifted,
                       "share": round(drifted / len(cand["answers"]), 6) if cand["answers"] else None}
    n, drifted = sum(t["n"] for t in tasks.values()), sum(t["drifted"] for t in tasks.values())
    share = round(drifted / n, 6) if n else None  # no generation answers: no drift measured
    first_model = baseline_eval["version"] is None
    blocks = cfg.max_answer_drift is not None and not first_model and share is not None and share > cfg.max_answer_drift
    changes.sort(key=lambda c: c["f1"])  # stable: ties keep task and doc order
    return {
        "share": share,
        "n": n,
        "drifted": drifted,
        "f1_below": cfg.answer_drift_f1,
        "max": cfg.max_answer_drift,
        "applies": cfg.max_answer_drift is not None and not first_model,
        "blocks": blocks,
        "tasks": tasks,
        "examples": changes[: cfg.answer_drift_examples],
    }


def review_reasons(cfg: GateConfig, rows: list[dict], candidate_eval: dict) -> list[str]:
    """Why a person should decide: a supporting rule regressed, an interval too wide to tell, a silent judge."""
    reasons = [f"{r['task']}/{r['metric']} regressed (supporting rule): {r['note']}"
               for r in rows if r["tier"] == "supporting" and r["verdict"] == "regressed"]
    if cfg.review_ci_width is not None:
        reasons += [f"{r['task']}/{r['metric']}: interval [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] is wider than "
                    f"{cfg.review_ci_width}: the eval cannot tell whether it dropped"
                    for r in rows if r["tier"] != "advisory" and r["verdict"] != "regressed" and r["n"]
                    and r["ci_high"] - r["ci_low"] > cfg.review_ci_width]
    judged = candidate_eval["tasks"].get("judge", {}).get("judge")
    if judged and judged["pairs"] and judged["no_verdict_rate"] > cfg.judge_max_no_verdict:
        reasons.append(f"the judge gave no verdict on {judged['no_verdict']} of {judged['pairs']} pairs "
                       f"({judged['no_verdict_rate']:.0%} > {cfg.judge_max_no_verdict:.0%})")
    return reasons


def decide(cfg: GateConfig, candidate_eval: dict, baseline_eval: dict) -> dict:
    rows = [{**judge_rule(r, candidate_eval["tasks"][r.task], baseline_eval["tasks"][r.task], cfg), "tier": r.tier}
            for r in cfg.rules]
    critical = [r for r in rows if r["tier"] == "critical"]
    regressed = list(dict.fromkeys(r["task"] for r in critical if r["verdict"] == "regressed"))
    uninformative = [f"{r['task']}/{r['metric']}" for r in rows if r["verdict"] == "uninformative"]
    drift = answer_drift(cfg, candidate_eval, baseline_eval)
    if cfg.block_uninformative:
        regressed += [t for t in dict.fromkeys(r["task"] for r in critical if r["verdict"] == "uninformative")
                      if t not in regressed]
    if drift["blocks"]:
        regressed.append("answer_drift")
    review = review_reasons(cfg, rows, candidate_eval)
    return {
        "passed": not regressed and not review,
        "outcome": "blocked" if regressed else "needs_review" if review else "passed",
        "review": review,
        "regressed": regressed,
        "improved": list(dict.fromkeys(r["task"] for r in rows if r["verdict"] == "improved")),
        "uninformative": uninformative,
        "block_uninformative": cfg.block_uninformative,
        "answer_drift": drift,
        "baseline": baseline_eval["label"],
        "first_model": baseline_eval["version"] is None,
        "alpha": cfg.alpha,
        "power": cfg.power,
        "rows": rows,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


PREFERENCE = "preference"  # the MLflow feedback a reviewer adds to a side-by-side trace
PREFERRED = ("candidate", "baseline", "tie")


def reviewer_preferences(tracking: TrackingConfig, run_id: str) -> dict[str, int] | None:
    """Reviewers' A/B preferences on the run's side-by-side traces (tasks/register.py); None when there are none.

    Counts HUMAN feedback named `preference` whose value is candidate, baseline or tie (any other value is
    counted as `other`). An LLM judge's or a script's feedback (source LLM_JUDGE/CODE) is not a reviewer's.
    MLflow marks an edited assessment invalid and keeps the new one, and a reviewer counts once per prompt,
    with their latest.
    """
    import mlflow

    from tunegate.registry import connect

    _, experiment_id = connect(tracking)
    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(locations=[experiment_id], run_id=run_id, include_spans=False, return_type="list")
    latest = {key: a for key, (a, _) in latest_human_feedback(traces, PREFERENCE).items()}
    if not latest:
        return None
    counts = dict.fromkeys((*PREFERRED, "other"), 0)
    for a in latest.values():
        value = str(a.feedback.value).strip().lower()
        counts[value if value in PREFERRED else "other"] += 1
    return {**counts, "prompts": len({trace for trace, _ in latest}), "reviewers": len({who for _, who in latest})}


def preferences_markdown(prefs: dict[str, int]) -> str:
    other = f", {prefs['other']} other values" if prefs["other"] else ""
    return (f"## Reviewer preferences\n\n{prefs['reviewers']} reviewer(s) on {prefs['prompts']} prompt(s) preferred: "
            f"candidate {prefs['candidate']}, baseline {prefs['baseline']}, tie {prefs['tie']}{other} "
            f"(MLflow feedback `{PREFERENCE}` on the run's side-by-side traces).")


def review_links(tracking: TrackingConfig, client, run_id: str) -> dict[str, str]:
    """MLflow UI links for a reviewer: the side-by-side table and the run's traces; none when no table was logged."""
    if "eval/side_by_side.json" not in {f.path for f in client.list_artifacts(run_id, "eval")}:
        return {}
    run = f"{tracking.ui()}/#/experiments/{client.get_run(run_id).info.experiment_id}/runs/{run_id}"
    return {"side_by_side": f"{run}/artifacts/eval/side_by_side.json", "traces": f"{run}/traces"}


def decision_markdown(decision: dict, version: str, links: dict[str, str] | None = None) -> str:
    head = {"passed": "PASSED", "blocked": f"BLOCKED ({', '.join(decision['regressed'])})",
            "needs_review": "NEEDS REVIEW"}[decision["outcome"]]
    against = (
        "the base model (first model: no champion yet; the same rules and the absolute limits apply)"
        if decision["first_model"] else decision["baseline"]
    )
    lines = [
        f"# Gate: {head}",
        f"Candidate version {version} against {against}. Delta is candidate minus baseline; the interval is "
        f"its {1 - decision['alpha']:.0%} paired-bootstrap interval; p is the two-sided p-value of the paired test; "
        f"MDE is the smallest drop that test detects with {decision['power']:.0%} power at this n "
        "(smaller drops pass unseen).",
        "",
    ]
    if links:
        lines += [f"**Answers side by side:** [eval/side_by_side.json]({links['side_by_side']}) in the MLflow UI. "
                  f"To record an A/B preference, open a prompt in the run's [Traces]({links['traces']}) tab and add "
                  f"feedback `{PREFERENCE}` = candidate, baseline or tie; the gate report counts them.", ""]
    if decision["review"]:
        lines += ["**A person decides:** " + "; ".join(decision["review"]) + ". Promote with `tunegate promote "
                  f"{version} --override --reason '...'`, or leave it.", ""]
    if decision["uninformative"]:
        blocks = "blocks: gate.block_uninformative" if decision["block_uninformative"] else "does not block"
        lines += [
            f"**Uninformative ({blocks}):** "
            f"{', '.join(decision['uninformative'])} scored the same on every sample of both models, so they "
            "cannot tell the models apart. Fix the metric or the eval data, or drop the rule.",
            "",
        ]
    lines += [
        f"| task | metric | {decision['baseline']} | candidate | delta | {1 - decision['alpha']:.0%} CI | p | MDE "
        "| test | rule | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in decision["rows"]:
        verdict = f"**{r['verdict']}**" if r["verdict"] in ("regressed", "uninformative") else r["verdict"]
        mde = "none" if r["mde"] is None else f"{r['mde']:.4f}"
        lines.append(
            f"| {r['task']} | {r['metric']} | {fmt(r['baseline_score'], '.4f')} | {fmt(r['candidate_score'], '.4f')} | "
            f"{fmt(r['delta'], '+.4f')} | [{fmt(r['ci_low'], '+.4f')}, {fmt(r['ci_high'], '+.4f')}] | "
            f"{fmt(r['p_value'], '.3g')} | {mde} | "
            f"{r['test']} | {r['rule']} | {verdict}: {r['note']} |"
        )
    lines += ["", "Per stratum (n docs, mean score):", "",
              f"| task | metric | stratum | n | {decision['baseline']} | candidate | delta |",
              "|---|---|---|---|---|---|---|"]
    for r in decision["rows"]:
        for st in r["strata"]:
            lines.append(f"| {r['task']} | {r['metric']} | {_cell(st['stratum'])} | {st['n']} | {st['baseline']:.4f} | "
                         f"{st['candidate']:.4f} | {st['candidate'] - st['baseline']:+.4f} |")
    drift = decision["answer_drift"]
    cap = (f"cap {drift['max']} against a champion: {'**exceeded, blocks**' if drift['blocks'] else 'held'}"
           if drift["applies"] else "report only" if drift["max"] is None else
           f"cap {drift['max']} not applied against the base model")
    per_task = ", ".join(f"{t} {v['drifted']}/{v['n']}" for t, v in drift["tasks"].items())
    lines += ["", f"Answer drift: {drift['drifted']}/{drift['n']} eval answers changed materially "
                  f"({fmt(drift['share'], '.1%')}; token F1 between the two answers < {drift['f1_below']}; {per_task}); {cap}."]
    for c in drift["examples"]:
        lines.append(f"- {c['task']} doc {c['doc_id']} ({c['stratum']}, F1 {c['f1']:.2f}): prompt `{c['prompt']}`; "
                     f"{decision['baseline']}: `{c['baseline']}`; candidate: `{c['candidate']}`")
    return "\n".join(lines)


class GateDecision(BaseModel):
    """The gate's verdict: passed or not, why (per-rule rows), and the table a reviewer reads."""

    model_config = ConfigDict(extra="forbid")
    passed: bool
    outcome: Literal["passed", "blocked", "needs_review"]
    review: list[str]
    regressed: list[str]
    improved: list[str]
    uninformative: list[str]
    block_uninformative: bool
    answer_drift: dict
    baseline: str
    first_model: bool
    alpha: float
    power: float
    rows: list[dict]
    markdown: str


@task
def gate(cfg: GateConfig, registered: RegisteredVersion, tracking: TrackingConfig) -> GateDecision:
    """Judge every rule; record the table in MLflow, on the model version and in Prefect."""
    import mlflow

    from tunegate.registry import connect

    decision = decide(cfg, registered.evals.candidate.model_dump(), registered.evals.baseline.model_dump())
    client, _ = connect(tracking)
    run_id, name, version = registered.run_id, registered.model_name, registered.version
    markdown = decision_markdown(decision, version, review_links(tracking, client, run_id))
    outcome = decision["outcome"]
    flat = [key for key in decision["rows"][0] if key != "strata"]  # per-stratum rows: in decision.json and .md
    table = {key: [row[key] for row in decision["rows"]] for key in flat}
    mlflow.log_table(data=table, artifact_file="gate/decision_table.json", run_id=run_id)
    client.log_dict(run_id, decision, "gate/decision.json")
    client.log_text(run_id, markdown, "gate/decision.md")
    client.set_tag(run_id, "gate", outcome)
    for row in decision["rows"]:
        client.set_model_version_tag(
            name, version, f"gate.{row['task']}.{row['metric']}",
            f"{row['verdict']}: delta {fmt(row['delta'], '+.4f')} [{fmt(row['ci_low'], '+.4f')}, "
            f"{fmt(row['ci_high'], '+.4f')}], p={fmt(row['p_value'], '.3g')}, MDE {fmt(row['mde'], '.4f')}; {row['note']}",
        )
    drift = decision["answer_drift"]
    client.set_model_version_tag(name, version, "gate.answer_drift",
                                 f"{fmt(drift['share'], '.4f')} ({drift['drifted']}/{drift['n']}), max {drift['max']}")
    client.set_model_version_tag(name, version, "gate.uninformative", ",".join(decision["uninformative"]))
    client.set_model_version_tag(name, version, "gate.baseline", decision["baseline"])
    client.set_model_version_tag(name, version, "gate.regressed", ",".join(decision["regressed"]))
    client.set_model_version_tag(name, version, "gate", outcome)
    create_markdown_artifact(markdown=markdown, key="gate-decision", description="Promotion gate decision")
    return GateDecision(**decision, markdown=markdown)
