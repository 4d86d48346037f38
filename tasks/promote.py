"""Stage 9, promote: move the `champion` alias to a candidate that passed the gate; also override and rollback.

    tunegate promote 7 --override --reason "eval set is stale; verified by hand"   # see cli/main.py
    tunegate rollback --reason "bad answers in production"
    tunegate rollback --to 3 --reason "back to the last version users liked"

On pass, the old champion becomes `previous` and `champion` moves to the new version, both under
one lock (tunegate.registry.alias_lock), so concurrent promotions leave one champion and a
`previous` that really was the champion it replaced. On a block, nothing moves and the stage
raises GateBlocked, so the flow run ends Failed with the regressed tasks in its message.

Rollback points `champion` back at `previous` (or at the version given with --to) and removes
`previous`: a second plain rollback then refuses instead of flipping back to the version just
rolled back. Who did what, when and why is
kept in tags on the versions (promotion.*, override.*, rollback.*, canary.*), visible in the registry.

With serve.canary set, a passed candidate goes on alias `candidate` instead (tag canary=serving,
canary.time): the champion stays, serve-model gives the candidate a share of users, and the live guard
(flows/guard.py) later promotes it through promote_version or discards it (discard_candidate).
"""

from __future__ import annotations

import getpass
import json
import logging
from datetime import datetime, timezone

from pathlib import Path

from prefect import task
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from tasks.gate import GateDecision, preferences_markdown, reviewer_preferences
from tasks.register import Registered, RegisteredVariant, RegisteredVersion
from tunegate.config import GateConfig, TrackingConfig, embedded
from tunegate.registry import CANDIDATE, CHAMPION, PREVIOUS, alias_lock, connect, get_alias

log = logging.getLogger(__name__)


class GateBlocked(RuntimeError):
    """The candidate regressed; the champion stays."""


class StaleBaseline(GateBlocked):
    """The candidate passed against a champion that another run replaced before this one could promote."""


class PromotionRefused(RuntimeError):
    """A promotion or rollback that the registry's state does not allow."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def move_champion(client, model_name: str, version: str) -> str | None:
    """Point `champion` at version and `previous` at the old champion; return the old one.

    The caller holds alias_lock. `previous` moves first: a crash between the two calls then leaves
    the champion as it was.
    """
    old = get_alias(client, model_name, CHAMPION)
    old_version = str(old.version) if old is not None else None
    if old_version is not None and old_version != str(version):
        client.set_registered_model_alias(model_name, PREVIOUS, old_version)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return old_version


def record(client, model_name: str, version: str, event: str, tags: dict[str, str]) -> None:
    """Tags on the version, the same record as a JSON file in the version's MLflow run, and a log line."""
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    client.log_dict(client.get_model_version(model_name, version).run_id, tags, f"registry/{event}-{stamp}.json")
    level = logging.WARNING if event == "override" else logging.INFO
    log.log(level, "%s version %s, %s: %s", model_name, version, event, json.dumps(tags))


def promote_version(tracking: TrackingConfig, version: str, override: bool = False, reason: str | None = None,
                    user: str | None = None) -> dict:
    """Make version the champion: allowed when its gate passed, or with override and a reason."""
    client, _ = connect(tracking)
    name, version = tracking.registered_model, str(version)
    gate_state = client.get_model_version(name, version).tags.get("gate", "pending")
    if override and not (reason and reason.strip()):
        raise PromotionRefused("--override needs --reason: it is recorded on the version")
    if gate_state != "passed" and not override:
        raise PromotionRefused(
            f"{name} version {version} has gate={gate_state}; promote it with --override --reason '...' "
            "if you are sure"
        )
    with alias_lock(tracking):
        previous = move_champion(client, name, version)
        candidate = get_alias(client, name, CANDIDATE)
        if candidate is not None and str(candidate.version) == version:  # its canary is over: it is the champion
            client.delete_registered_model_alias(name, CANDIDATE)
    tags = {"promotion": "override" if override else "manual", "promotion.time": utc_now(),
            "promotion.user": user or current_user(), "promotion.replaced": str(previous)}
    if override:
        tags |= {"override.reason": reason.strip(), "override.user": tags["promotion.user"],
                 "override.time": tags["promotion.time"], "override.gate": gate_state}
    record(client, name, version, tags["promotion"], tags)
    return {"promoted": True, "version": version, "previous": previous, "override": override}


def rollback(tracking: TrackingConfig, reason: str | None = None, user: str | None = None,
             to: str | None = None, expected: str | None = None) -> dict:
    """Point `champion` back at `previous` (or at version `to`); `previous` is removed, so rollbacks never ping-pong.
    expected: roll back only if this version is still the champion (the guard judged that one)."""
    client, _ = connect(tracking)
    name = tracking.registered_model
    with alias_lock(tracking):
        champion = get_alias(client, name, CHAMPION)
        if expected is not None and (champion is None or str(champion.version) != str(expected)):
            raise PromotionRefused(f"{name} version {expected} is no longer the champion "
                                   f"(now {champion.version if champion else 'none'}); nothing rolled back")
        target = get_alias(client, name, PREVIOUS) if to is None else version_or_none(client, name, str(to))
        if champion is None or target is None:
            missing = "champion" if champion is None else "previous" if to is None else f"version {to}"
            raise PromotionRefused(
                f"{name} has no {missing} version to roll back "
                "(a rollback removes `previous`; use `tunegate rollback --to VERSION` or `tunegate promote VERSION`)"
            )
        if str(target.version) == str(champion.version):
            raise PromotionRefused(f"{name} version {target.version} is already the champion")
        client.set_registered_model_alias(name, CHAMPION, str(target.version))
        if get_alias(client, name, PREVIOUS) is not None:
            client.delete_registered_model_alias(name, PREVIOUS)
    when, who = utc_now(), user or current_user()
    record(client, name, str(champion.version), "rolled-back", {"rollback.time": when, "rollback.user": who,
                                                 "rollback.reason": reason or "", "rollback.to": str(target.version)})
    record(client, name, str(target.version), "rollback", {"promotion": "rollback", "promotion.time": when,
                                               "promotion.user": who, "promotion.replaced": str(champion.version)})
    return {"champion": str(target.version), "rolled_back": str(champion.version)}


def stale_reason(client, name: str, judged: str | None) -> str | None:
    """Why a verdict against `judged` no longer holds (another run promoted while this one evaluated), or None.
    The caller holds alias_lock."""
    current = get_alias(client, name, CHAMPION)
    current = str(current.version) if current is not None else None
    if current == judged:
        return None
    return (f"it was judged against {f'v{judged}' if judged else 'the base model'} and version {current} "
            "became the champion meanwhile")


def put_on_candidate(client, tracking: TrackingConfig, version: str, judged: str | None) -> str | None:
    """Alias `candidate` <- version, when `judged` is still the champion (else the stale reason). The caller holds
    alias_lock. A candidate it replaces is marked canary=replaced."""
    name = tracking.registered_model
    stale = stale_reason(client, name, judged)
    if stale:
        return stale
    old = get_alias(client, name, CANDIDATE)
    client.set_registered_model_alias(name, CANDIDATE, version)
    if old is not None and str(old.version) != version:
        record(client, name, str(old.version), "canary", {"canary": "replaced", "canary.replaced_by": version,
                                                           "canary.end": utc_now()})
    return None


def discard_candidate(tracking: TrackingConfig, version: str, reason: str, tags: dict[str, str]) -> bool:
    """Remove alias `candidate` from version (if it is still there) and tag it canary=discarded with why."""
    client, _ = connect(tracking)
    name = tracking.registered_model
    with alias_lock(tracking):
        current = get_alias(client, name, CANDIDATE)
        if current is None or str(current.version) != str(version):
            return False  # another run moved or removed it meanwhile
        client.delete_registered_model_alias(name, CANDIDATE)
    record(client, name, str(version), "canary", {**tags, "canary": "discarded", "canary.reason": reason,
                                                  "canary.end": utc_now()})
    return True


def version_or_none(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException:
        return None


class ReviewDecision(RunInput):
    """A person's decision on a candidate the gate could not decide (needs_review)."""

    approve: bool = Field(description="Promote this version to champion.")
    reviewer: str = Field(min_length=1, description="Who decides; recorded on the model version.")
    reason: str = Field(min_length=1, description="Why; recorded on the model version.")


def await_review(decision: GateDecision, version: str, cfg: GateConfig) -> ReviewDecision | None:
    """On needs_review with gate.review_timeout_s set, pause the flow run until a person decides in the Prefect
    UI (a form with the gate table); no decision in time rejects. Called from the flow: only a flow run pauses."""
    if decision.outcome != "needs_review" or cfg.review_timeout_s is None:
        return None
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    form = ReviewDecision.with_initial_data(  # the markdown names the reasons and links the side-by-side answers
        description=f"Version {version} needs a person's decision.\n\n{decision.markdown}", approve=False)
    try:
        return pause_flow_run(wait_for_input=form, timeout=cfg.review_timeout_s, poll_interval=2)
    except FlowPauseTimeout:
        return ReviewDecision(approve=False, reviewer="timeout",
                              reason=f"no decision within gate.review_timeout_s={cfg.review_timeout_s} s")


class Promotion(BaseModel):
    """Whether the gate's decision moved `champion`, to which version, and what it replaced."""

    model_config = ConfigDict(extra="forbid")
    promoted: bool
    version: str
    previous: str | None = None
    review: str | None = None  # "approved by <reviewer>: <reason>" or "rejected by ...", after needs_review
    stale: str | None = None  # why it was not promoted although it passed: the champion moved while it was judged
    preferences: dict[str, int] | None = None  # reviewers' A/B preferences on the side-by-side traces, if any
    canary: bool = False  # it passed and went on alias `candidate` (serve.canary); the guard decides the rest


@task
def promote(decision: GateDecision, registered: RegisteredVersion, tracking: TrackingConfig,
            review: ReviewDecision | None = None) -> Promotion:
    """Promote on pass, or on a reviewer's approval of a needs_review candidate; otherwise leave the champion alone
    (the flow fails afterwards, see `conclude`)."""
    client, _ = connect(tracking)
    name, version = registered.model_name, registered.version
    said, prefs = None, reviewer_preferences(tracking, registered.run_id)
    if prefs is not None:  # the gate report counts them: a tag on the version and a section in gate/decision.md
        record(client, name, version, "preferences", {"review.preferences": json.dumps(prefs)})
        client.log_text(registered.run_id, f"{decision.markdown}\n\n{preferences_markdown(prefs)}", "gate/decision.md")
    if review is not None:
        said = f"{'approved' if review.approve else 'rejected'} by {review.reviewer}: {review.reason}"
        tags = {"review.decision": "approved" if review.approve else "rejected", "review.user": review.reviewer,
                "review.reason": review.reason, "review.time": utc_now()}
        record(client, name, version, "review", tags if review.approve else {**tags, "gate": "rejected"})
    if not (decision.passed or (review is not None and review.approve)):
        return Promotion(promoted=False, version=version, review=said, preferences=prefs)
    judged = registered.evals.baseline.version  # None: judged against the base model (there was no champion)
    if registered.canary is not None and judged is not None:  # with no champion there is nothing to compare to
        with alias_lock(tracking):
            stale = put_on_candidate(client, tracking, version, judged)
        if stale:
            record(client, name, version, "stale", {"gate": "stale", "gate.stale": stale})
            return Promotion(promoted=False, version=version, review=said, preferences=prefs, stale=stale)
        record(client, name, version, "canary", {"canary": "serving", "canary.time": utc_now(),
                                                 "canary.share": str(registered.canary.share),
                                                 "canary.champion": judged})
        return Promotion(promoted=False, version=version, review=said, preferences=prefs, canary=True)
    with alias_lock(tracking):
        # Another run may have promoted while this one evaluated: its verdict is about a champion that is gone.
        stale = stale_reason(client, name, judged)
        if stale:
            record(client, name, version, "stale", {"gate": "stale", "gate.stale": stale})
            return Promotion(promoted=False, version=version, review=said, preferences=prefs, stale=stale)
        previous = move_champion(client, name, version)
    record(client, name, version, "gate", {"promotion": "gate" if decision.passed else "review",
                                           "promotion.time": utc_now(), "promotion.replaced": str(previous),
                                           "promotion.judged_against": str(judged)})
    return Promotion(promoted=True, version=version, previous=previous, review=said, preferences=prefs)


class RunSummary(BaseModel):
    """What a person wants at the end of a run; written to <run>/summary.json after the promotion decision."""

    model_config = ConfigDict(extra="forbid")
    rows_kept: int
    rows_quarantined: int
    quarantine_file: str
    train_loss: float
    train_steps: int
    baseline: str
    eval_cache_hits: dict[str, list[str]]
    eval: dict[str, dict[str, dict[str, float]]]
    gate: str
    regressed: list[str]
    promoted: bool
    review: str | None = None
    stale: str | None = None
    preferences: dict[str, int] | None = None
    canary: bool = False  # on alias `candidate`, serving a share of users until the live guard decides
    judge: dict | None = None  # the pairwise judge's summary (tasks/judge.py judge_summary), when a judge ran
    reward: dict | None = None  # the reward model's accuracy and its scores of both models (tasks/reward_eval.py)
    model_name: str
    mlflow_run_id: str
    model_version: str
    mlflow_ui: str


def run_summary(registered: Registered, decision: GateDecision, promotion: Promotion) -> RunSummary:
    validated, trained = registered.prepared.validated, registered.aligned.sft
    candidate, baseline = registered.evals.candidate, registered.evals.baseline
    return RunSummary(
        rows_kept=validated.rows_kept,
        rows_quarantined=validated.rows_quarantined,
        quarantine_file=validated.quarantine,
        train_loss=trained.train_loss,
        train_steps=trained.steps,
        baseline=baseline.label,
        eval_cache_hits={"baseline": baseline.cache_hits, "candidate": candidate.cache_hits},
        eval={t: {"baseline": baseline.tasks[t]["metrics"], "candidate": candidate.tasks[t]["metrics"]}
              for t in candidate.tasks},
        gate=decision.outcome,
        regressed=decision.regressed,
        promoted=promotion.promoted,
        review=promotion.review,
        stale=promotion.stale,
        preferences=promotion.preferences,
        canary=promotion.canary,
        judge=candidate.tasks.get("judge", {}).get("judge"),
        reward=candidate.tasks.get("reward", {}).get("reward"),
        model_name=registered.model_name,
        mlflow_run_id=registered.run_id,
        model_version=registered.version,
        mlflow_ui=(f"mlflow ui --backend-store-uri {registered.tracking_uri}" if embedded(registered.tracking_uri)
                   else registered.tracking_uri),
    )


@task
def summarize(registered: Registered, decision: GateDecision, promotion: Promotion, run_dir: str) -> RunSummary:
    """Write summary.json in the run folder after the promotion decision, for the CLI and for people."""
    summary = run_summary(registered, decision, promotion)
    (Path(run_dir) / "summary.json").write_text(summary.model_dump_json(indent=2))
    return summary


@task
def conclude(summary: RunSummary, decision: GateDecision) -> RunSummary:
    """End the run: the summary when promoted, else fail with the regressed tasks (the champion did not move)."""
    if summary.stale:
        raise StaleBaseline(
            f"{summary.model_name} version {summary.model_version} passed its gate, but {summary.stale}. The champion "
            "alias did not move; run the pipeline again to judge it against the current champion (its evaluations "
            f"are cached, so only the new champion's are computed).\n{decision.markdown}")
    if summary.canary:  # passed; on `candidate` until the live guard promotes or discards it
        return summary
    if not summary.promoted and decision.outcome == "needs_review":
        raise GateBlocked(
            f"Gate asks for review of {summary.model_name} version {summary.model_version}: "
            f"{'; '.join(decision.review)}. The champion alias did not move; promote it with `tunegate promote "
            f"{summary.model_version} --override --reason '...'` if a person decides so.\n{decision.markdown}"
        )
    if not summary.promoted:
        raise GateBlocked(
            f"Gate blocked {summary.model_name} version {summary.model_version}: regressed on "
            f"{', '.join(decision.regressed)}. The champion alias did not move.\n{decision.markdown}"
        )
    return summary


class VariantSummary(BaseModel):
    """The end of `tunegate quantize`: the variant, its gate and whether it serves; <run>/summary.json."""

    model_config = ConfigDict(extra="forbid")
    model_name: str
    model_version: str
    source_version: str
    method: str
    library: str
    source_bytes: int
    bytes: int
    int8_layers: int
    linear_layers: int
    baseline: str
    eval_cache_hits: dict[str, list[str]]
    eval: dict[str, dict[str, dict[str, float]]]
    gate: str
    regressed: list[str]
    review: list[str]
    promoted: bool
    stale: str | None = None
    mlflow_run_id: str
    mlflow_ui: str


@task
def conclude_variant(registered: RegisteredVariant, decision: GateDecision, promotion: Promotion, run_dir: str
                     ) -> VariantSummary:
    """Write summary.json; return it when the variant was promoted, else fail naming why (the champion stays)."""
    quantized, candidate, baseline = registered.quantized, registered.evals.candidate, registered.evals.baseline
    summary = VariantSummary(
        model_name=registered.model_name, model_version=registered.version, source_version=quantized.source.version,
        method=quantized.method, library=quantized.library, source_bytes=quantized.source.bytes, bytes=quantized.bytes,
        int8_layers=quantized.int8_layers, linear_layers=quantized.linear_layers, baseline=baseline.label,
        eval_cache_hits={"baseline": baseline.cache_hits, "candidate": candidate.cache_hits},
        eval={t: {"baseline": baseline.tasks[t]["metrics"], "candidate": candidate.tasks[t]["metrics"]}
              for t in candidate.tasks},
        gate=decision.outcome, regressed=decision.regressed, review=decision.review, promoted=promotion.promoted,
        stale=promotion.stale, mlflow_run_id=registered.run_id,
        mlflow_ui=(f"mlflow ui --backend-store-uri {registered.tracking_uri}" if embedded(registered.tracking_uri)
                   else registered.tracking_uri))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "summary.json").write_text(summary.model_dump_json(indent=2))
    what = f"{summary.model_name} version {summary.model_version} ({summary.method} of version {summary.source_version})"
    if summary.stale:
        raise StaleBaseline(f"{what} passed its gate, but {summary.stale}. The champion alias did not move; run "
                            f"tunegate quantize again.\n{decision.markdown}")
    if not summary.promoted:
        why = ("asks for review: " + "; ".join(decision.review) if decision.outcome == "needs_review"
               else "regressed on " + ", ".join(decision.regressed))
        raise GateBlocked(f"Gate on {what} {why}. The champion alias did not move.\n{decision.markdown}")
    return summary
