"""Guard stage: judge live versions by their users' ratings; roll back a regressed champion, settle a canary.

    python -m tasks.guard configs/demo.yaml      # print both verdicts, move nothing

Champion: its downvote rate since its promotion (`promotion.time` tag) against the `previous` version's
before it (guard.lookback_days back). Canary: the `candidate` alias's rate against the champion's over
the same time, since the candidate went on its alias (`canary.time` tag). Both from the served traces
and their HUMAN `user_rating` assessments (tunegate/traces.py), one vote per rater and request.

The test is exact and one-sided (Fisher, tunegate/stats.py): "the new version is downvoted more". A
version is worse when that is significant (p < guard.alpha) and the increase is above
guard.max_increase. Fewer than min_ratings votes on either side is "not_yet": no rollback, no verdict.
Without a champion, a previous version or a candidate there is nothing to compare: a status says so.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from tasks.feedback import parse_time
from tasks.promote import PromotionRefused, discard_candidate, promote_version, record, rollback, utc_now
from tunegate.config import CanaryConfig, GuardConfig, TrackingConfig
from tunegate.registry import CANDIDATE, CHAMPION, PREVIOUS, connect, get_alias, serving_experiment
from tunegate.stats import downvote_increase
from tunegate.traces import (CANDIDATE_ARM, CHAMPION_ARM, MODEL_NAME_TAG, MODEL_VERSION_TAG, arm_of, rater_votes,
                             served_traces)

GUARD_USER = "tunegate-guard"  # who the registry's tags name for the guard's moves
ROLLED_BACK_EVENT = "tunegate.guard.rolled_back"


class LiveVotes(BaseModel):
    """One version's served requests in one arm and time span, and its raters' votes on them."""

    model_config = ConfigDict(extra="forbid")
    version: str
    arm: str
    start: datetime
    end: datetime
    requests: int
    votes: int  # one per rater and request
    downvotes: int
    raters: int
    capped: int = 0  # votes over guard.max_votes_per_rater, not counted
    downvote_rate: float | None
    most_downvoted: list[str]  # trace ids, most downvotes first (no text: traces hold it, redacted)


class LiveVerdict(BaseModel):
    """The guard's answer about one pair of versions: `new` (champion or candidate) against `old`."""

    model_config = ConfigDict(extra="forbid")
    subject: Literal["champion", "canary"]
    status: Literal["off", "no_champion", "no_previous", "no_candidate", "no_traffic", "not_yet", "ok", "worse",
                    "expired", "rolled_back", "promoted", "discarded", "refused"]
    reason: str
    model_name: str
    new: LiveVotes | None = None
    old: LiveVotes | None = None
    increase: float | None = None  # new downvote rate - old downvote rate
    p_value: float | None = None
    min_ratings: int | None = None


def tag_time(value: str | None, fallback_ms: int) -> datetime:
    """A time tag (promotion.time, canary.time); the version's creation time for versions from before the tag."""
    return parse_time(value) if value else datetime.fromtimestamp(fallback_ms / 1000, tz=timezone.utc)


def cap_per_rater(per_trace: list[tuple[str, dict[str, str]]], cap: int | None) -> list[tuple[str, dict[str, str]]]:
    """Keep each rater's votes on their latest `cap` requests (per_trace is in request order)."""
    if cap is None:
        return per_trace
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for tid, votes in reversed(per_trace):
        mine = {}
        for rater, value in votes.items():
            seen[rater] += 1
            if seen[rater] <= cap:
                mine[rater] = value
        kept.append((tid, mine))
    return kept[::-1]


def live_votes(traces: list, name: str, version: str, arm: str, start: datetime, end: datetime,
               top: int, cap: int | None = None) -> LiveVotes:
    """Votes on the traces of `version` answered as `arm` that started in [start, end); at most `cap` per rater."""
    lo, hi = start.timestamp() * 1000, end.timestamp() * 1000
    mine = sorted((t for t in traces if t.info.tags.get(MODEL_NAME_TAG) == name
                   and t.info.tags.get(MODEL_VERSION_TAG) == version and arm_of(t) == arm
                   and lo <= t.info.timestamp_ms < hi), key=lambda t: t.info.timestamp_ms)
    every = [(t.info.trace_id, rater_votes(t)) for t in mine]
    per_trace = cap_per_rater(every, cap)
    votes = sum(len(v) for _, v in per_trace)
    down = {tid: list(v.values()).count("down") for tid, v in per_trace}
    downvotes = sum(down.values())
    worst = sorted((tid for tid, n in down.items() if n), key=lambda tid: -down[tid])[:top]
    return LiveVotes(version=version, arm=arm, start=start, end=end, requests=len(mine), votes=votes,
                     downvotes=downvotes, raters=len({r for _, v in per_trace for r in v}),
                     capped=sum(len(v) for _, v in every) - votes,
                     downvote_rate=downvotes / votes if votes else None, most_downvoted=worst)


def compare(verdict: LiveVerdict, cfg: GuardConfig, min_ratings: int) -> LiveVerdict:
    """not_yet below min_ratings on either side; worse when significantly and materially more downvoted; else ok."""
    new, old = verdict.new, verdict.old
    update = {"min_ratings": min_ratings}
    if new.requests == 0 and old.requests == 0:
        return verdict.model_copy(update={**update, "status": "no_traffic", "reason": "no served requests on either "
                                          "side yet"})
    if new.votes < min_ratings or old.votes < min_ratings:
        return verdict.model_copy(update={**update, "status": "not_yet", "reason": (
            f"not enough ratings yet: v{new.version} has {new.votes}, v{old.version} {old.votes}; "
            f"{min_ratings} each are needed")})
    increase = new.downvote_rate - old.downvote_rate
    p = downvote_increase(new.downvotes, new.votes, old.downvotes, old.votes)
    worse = p < cfg.alpha and increase > cfg.max_increase
    capped = f"; {new.capped + old.capped} votes over the per-rater cap not counted" if new.capped + old.capped else ""
    said = (f"downvote rate {new.downvote_rate:.1%} ({new.downvotes}/{new.votes}, {new.raters} raters) for "
            f"v{new.version} against {old.downvote_rate:.1%} ({old.downvotes}/{old.votes}) for v{old.version}: "
            f"{increase:+.1%}, one-sided Fisher p={p:.3g} (alpha {cfg.alpha}, allowed increase {cfg.max_increase:.1%})"
            f"{capped}")
    return verdict.model_copy(update={**update, "status": "worse" if worse else "ok", "reason": said,
                                      "increase": increase, "p_value": p})


def served_since(tracking: TrackingConfig, start: datetime, end: datetime) -> list:
    _, experiment_id = serving_experiment(tracking)
    return served_traces(experiment_id, int(start.timestamp() * 1000), int(end.timestamp() * 1000) + 1)


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def judge_champion(tracking: TrackingConfig, cfg: GuardConfig) -> LiveVerdict:
    """The champion's live downvote rate since its promotion against the previous version's before it."""
    client, _ = connect(tracking)
    name = tracking.registered_model
    verdict = LiveVerdict(subject="champion", status="no_champion", reason=f"{name} has no champion", model_name=name)
    champion = get_alias(client, name, CHAMPION)
    if champion is None:
        return verdict
    previous = get_alias(client, name, PREVIOUS)
    if previous is None:
        return verdict.model_copy(update={"status": "no_previous", "reason": (
            f"{name} v{champion.version} has no `previous` version to compare with (first promotion, or after a "
            "rollback)")})
    now = datetime.now(timezone.utc)
    since = tag_time(champion.tags.get("promotion.time"), champion.creation_timestamp)
    # promotion.time has whole seconds: the previous version's last second before it still counts as before.
    before_end = since + timedelta(seconds=1)
    traces = served_since(tracking, since - timedelta(days=cfg.lookback_days), now)
    new = live_votes(traces, name, str(champion.version), CHAMPION_ARM, since, now + timedelta(seconds=1),
                     cfg.top_traces, cfg.max_votes_per_rater)
    old = live_votes(traces, name, str(previous.version), CHAMPION_ARM, since - timedelta(days=cfg.lookback_days),
                     before_end, cfg.top_traces, cfg.max_votes_per_rater)
    return compare(verdict.model_copy(update={"new": new, "old": old}), cfg, cfg.min_ratings)


def guard_tags(verdict: LiveVerdict, prefix: str) -> dict[str, str]:
    """The evidence as version tags: rates, counts, p, the most downvoted trace ids; no message text."""
    new, old = verdict.new, verdict.old
    return {f"{prefix}.time": utc_now(), f"{prefix}.reason": verdict.reason,
            f"{prefix}.downvote_rate": f"{new.downvote_rate:.4f}" if new.downvote_rate is not None else "",
            f"{prefix}.votes": str(new.votes), f"{prefix}.raters": str(new.raters),
            f"{prefix}.compared_with": old.version,
            f"{prefix}.compared_downvote_rate": f"{old.downvote_rate:.4f}" if old.downvote_rate is not None else "",
            f"{prefix}.compared_votes": str(old.votes),
            f"{prefix}.p_value": "" if verdict.p_value is None else f"{verdict.p_value:.4g}",
            f"{prefix}.most_downvoted": json.dumps(new.most_downvoted)}


def emit(event: str, verdict: LiveVerdict) -> None:
    """A Prefect event on the model version, for an automation (notification, page) to hook on."""
    from prefect.events import emit_event

    emit_event(event=event, resource={"prefect.resource.id": f"tunegate.model-version.{verdict.model_name}."
                                                             f"{verdict.new.version}",
                                      "prefect.resource.name": f"{verdict.model_name} v{verdict.new.version}"},
               payload=json.loads(verdict.model_dump_json()))


@task
def roll_back_regressed(tracking: TrackingConfig, verdict: LiveVerdict) -> LiveVerdict:
    """On `worse`: the champion goes back to `previous` through the locked rollback path, with the evidence on
    the rolled-back version (guard.* tags) and the event tunegate.guard.rolled_back; otherwise nothing moves."""
    if verdict.status != "worse":
        return verdict
    try:
        rollback(tracking, reason=f"live guard: {verdict.reason}", user=GUARD_USER, to=verdict.old.version,
                 expected=verdict.new.version)
    except PromotionRefused as err:  # someone moved the champion since it was judged: judge again next run
        return verdict.model_copy(update={"status": "refused", "reason": f"{verdict.reason}; not rolled back: {err}"})
    client, _ = connect(tracking)
    record(client, verdict.model_name, verdict.new.version, "guard", guard_tags(verdict, "guard"))
    verdict = verdict.model_copy(update={"status": "rolled_back"})
    emit(ROLLED_BACK_EVENT, verdict)
    return verdict


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def judge_canary(tracking: TrackingConfig, cfg: GuardConfig, canary: CanaryConfig | None) -> LiveVerdict:
    """The candidate's live downvote rate against the champion's over the same time, since its canary began."""
    name = tracking.registered_model
    verdict = LiveVerdict(subject="canary", status="off", reason="serve.canary is not set", model_name=name)
    if canary is None:
        return verdict
    client, _ = connect(tracking)
    candidate, champion = get_alias(client, name, CANDIDATE), get_alias(client, name, CHAMPION)
    if candidate is None or champion is None:
        missing = "candidate" if candidate is None else "champion"
        return verdict.model_copy(update={"status": f"no_{missing}", "reason": f"{name} has no {missing}"})
    if str(candidate.version) == str(champion.version):  # promoted by hand meanwhile: serve-model sends it no canary
        return verdict.model_copy(update={"status": "no_candidate", "reason": (
            f"alias candidate names the champion v{champion.version}: nothing to compare")})
    now = datetime.now(timezone.utc)
    since = tag_time(candidate.tags.get("canary.time"), candidate.creation_timestamp)
    traces = served_since(tracking, since, now)
    end = now + timedelta(seconds=1)
    verdict = verdict.model_copy(update={
        "new": live_votes(traces, name, str(candidate.version), CANDIDATE_ARM, since, end, cfg.top_traces,
                          cfg.max_votes_per_rater),
        "old": live_votes(traces, name, str(champion.version), CHAMPION_ARM, since, end, cfg.top_traces,
                          cfg.max_votes_per_rater)})
    verdict = compare(verdict, cfg, canary.min_ratings)
    hours = (now - since).total_seconds() / 3600
    if verdict.status in ("not_yet", "no_traffic") and hours > canary.max_hours:
        return verdict.model_copy(update={"status": "expired", "reason": (
            f"{hours:.1f} h on the candidate alias (serve.canary.max_hours {canary.max_hours}) and {verdict.reason}")})
    return verdict


@task
def settle_canary(tracking: TrackingConfig, verdict: LiveVerdict) -> LiveVerdict:
    """ok: promote the candidate (the locked promote path); worse or expired: discard it (alias removed, tagged
    canary=discarded with why); otherwise leave it serving. Each move fires tunegate.canary.<promoted|discarded>."""
    if verdict.status == "ok":
        try:
            promote_version(tracking, verdict.new.version, user=GUARD_USER)
        except PromotionRefused as err:
            return verdict.model_copy(update={"status": "refused", "reason": f"{verdict.reason}; not promoted: {err}"})
        client, _ = connect(tracking)
        record(client, verdict.model_name, verdict.new.version, "canary",
               {**guard_tags(verdict, "canary.guard"), "canary": "promoted", "canary.end": utc_now()})
        verdict = verdict.model_copy(update={"status": "promoted"})
    elif verdict.status in ("worse", "expired"):
        if not discard_candidate(tracking, verdict.new.version, verdict.reason, guard_tags(verdict, "canary.guard")):
            return verdict.model_copy(update={"status": "refused", "reason": f"{verdict.reason}; the candidate alias "
                                              "moved meanwhile, nothing discarded"})
        verdict = verdict.model_copy(update={"status": "discarded"})
    else:
        return verdict
    emit(f"tunegate.canary.{verdict.status}", verdict)
    return verdict


def verdict_markdown(v: LiveVerdict) -> str:
    lines = [f"### {v.subject}: {v.status}", "", v.reason]
    if v.new is not None and v.old is not None:
        lines += ["", "| version | arm | requests | votes | raters | downvote rate | most downvoted traces |",
                  "|---|---|---|---|---|---|---|"]
        for side in (v.new, v.old):
            rate = ("no votes" if side.downvote_rate is None
                    else f"{side.downvote_rate:.1%} ({side.downvotes}/{side.votes})")
            lines.append(f"| {side.version} | {side.arm} | {side.requests} | {side.votes} | {side.raters} | {rate} | "
                         f"{', '.join(side.most_downvoted) or '-'} |")
    return "\n".join(lines)


@task
def publish_guard(champion: LiveVerdict, canary: LiveVerdict) -> str:
    """Both verdicts as a Prefect markdown artifact (key live-guard), next to the flow run."""
    markdown = "\n\n".join(["## Live guard", verdict_markdown(champion), verdict_markdown(canary)])
    create_markdown_artifact(markdown=markdown, key="live-guard", description="Live downvote rates and the guard's "
                             "decisions")
    return markdown


if __name__ == "__main__":
    from tunegate.config import load_config

    params = load_config(sys.argv[1])
    print(verdict_markdown(judge_champion.fn(params.tracking, params.guard)))
    print(verdict_markdown(judge_canary.fn(params.tracking, params.guard, params.serve.canary)))
