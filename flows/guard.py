"""The live guard: roll back a champion its users rate worse than the version before it; settle a canary.

    tunegate guard [--config configs/demo.yaml]      # by hand; prints both verdicts
    tunegate serve                                   # every 15 minutes, as the `live-guard` deployment

Reads the served traces and their ratings (tasks/guard.py). On a significant regression of the
champion's downvote rate it rolls back through the same locked path as `tunegate rollback`, writes
the rates, vote counts, p-value and the most downvoted trace ids as guard.* tags on the rolled-back
version, and fires the Prefect event `tunegate.guard.rolled_back` (resource
`tunegate.model-version.<model>.<version>`): a Prefect automation with that trigger sends the
notification (Slack, e-mail, a webhook). With serve.canary set it also promotes or discards the
candidate (events `tunegate.canary.promoted`, `tunegate.canary.discarded`). Both verdicts go to the
flow run's markdown artifact `live-guard`. Too few ratings is "not_yet": nothing moves.
"""

from __future__ import annotations

import sys

from prefect import flow
from pydantic import BaseModel, ConfigDict

from tasks.guard import LiveVerdict, judge_canary, judge_champion, publish_guard, roll_back_regressed, settle_canary
from tunegate.config import CanaryConfig, GuardConfig, TrackingConfig, load_config


class GuardReport(BaseModel):
    """What the guard found and did: the champion against its predecessor, the candidate against the champion."""

    model_config = ConfigDict(extra="forbid")
    champion: LiveVerdict
    canary: LiveVerdict


@flow(name="live-guard")
def live_guard(tracking: TrackingConfig = TrackingConfig(), guard: GuardConfig = GuardConfig(),
               canary: CanaryConfig | None = None) -> GuardReport:
    """Roll back a champion its users rate significantly worse than `previous`; promote or discard a canary."""
    champion = judge_champion(tracking, guard)
    champion = roll_back_regressed(tracking, champion)
    candidate = judge_canary(tracking, guard, canary)
    candidate = settle_canary(tracking, candidate)
    publish_guard(champion, candidate)
    return GuardReport(champion=champion, canary=candidate)


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    params = load_config(*overrides_from_argv(sys.argv[1:]))
    print(live_guard(params.tracking, params.guard, params.serve.canary).model_dump_json(indent=2))
