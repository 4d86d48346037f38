"""Which arm answers a request during a canary: the champion, or for serve.canary.share of users the candidate.

    arm = pick_arm(champion, candidate, 0.3, user_key(request.user, messages))   # serve/app.py, per request

Sticky per user: the arm comes from a hash of the request's OpenAI `user` field (or `safety_identifier`, which
OpenAI now recommends in its place), else of the conversation's first user message, so one user keeps
seeing one version and their ratings judge that version alone. The hash is uniform, so over many users
the candidate answers `share` of them. Both arms are followed the same way (serve/champion.py); while the
candidate alias is unset, not loaded yet, or names the champion's version, the champion answers everyone.
"""

from __future__ import annotations

import hashlib

from serve.backend import LoadedVersion
from serve.champion import ChampionFollower
from tunegate.traces import CANDIDATE_ARM, CHAMPION_ARM


def user_key(user: str | None, messages: list[dict]) -> str:
    """What a user is known by: the id the client sent, else the first thing they asked."""
    if user:
        return "user:" + user
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    return "message:" + first


def in_canary(key: str, share: float) -> bool:
    """True for `share` of all keys, always the same for one key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < share


def pick_arm(champion: ChampionFollower, candidate: ChampionFollower | None, share: float,
             key: str) -> tuple[LoadedVersion | None, str]:
    """(the version that answers, its arm); read once per request, like `follower.current`."""
    main = champion.current
    other = candidate.current if candidate is not None else None
    if main is not None and other is not None and other.version != main.version and in_canary(key, share):
        return other, CANDIDATE_ARM
    return main, CHAMPION_ARM
