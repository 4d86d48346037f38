"""Stage 9, promote: move the `champion` alias to a candidate that passed the gate.

On pass, the old champion becomes `previous` and `champion` moves to the new version. On a
block, nothing moves and the stage raises GateBlocked, so the flow run ends Failed with the
regressed tasks in its message.
"""

from __future__ import annotations

from prefect import task

from tunegate.config import TrackingConfig
from tunegate.registry import CHAMPION, PREVIOUS, connect, get_alias


class GateBlocked(RuntimeError):
    """The candidate regressed; the champion stays."""


def move_champion(client, model_name: str, version: str) -> str | None:
    """Point `champion` at version and `previous` at the old champion; return the old one."""
    old = get_alias(client, model_name, CHAMPION)
    old_version = str(old.version) if old is not None else None
    if old_version is not None and old_version != str(version):
        client.set_registered_model_alias(model_name, PREVIOUS, old_version)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return old_version


@task
def promote(decision: dict, registered: dict, tracking: TrackingConfig) -> dict:
    """Promote on pass; on block leave the champion alone and fail with the regressed tasks."""
    client, _ = connect(tracking)
    name, version = registered["model_name"], registered["version"]
    if not decision["passed"]:
        raise GateBlocked(
            f"Gate blocked {name} version {version}: regressed on {', '.join(decision['regressed'])}. "
            f"The champion alias did not move.\n{decision['markdown']}"
        )
    previous = move_champion(client, name, version)
    return {"promoted": True, "version": version, "previous": previous}
