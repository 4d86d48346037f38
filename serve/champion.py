"""Follow the `champion` alias (and `candidate` during a canary): load a new version fully, then switch; never
switch to one that fails.

Polling, not events: MLflow delivers registry webhooks (alias created/deleted) only from a tracking
server's request handlers. tunegate's promote and rollback write the sqlite store directly, so no
event would ever fire; a Prefect automation would tie serving to a Prefect server. One
`get_model_version_by_alias` call every few seconds is cheap, works on every store, and after a
restart the server converges to whatever the alias says.

A request takes `follower.current` once and keeps that LoadedVersion until it ends, so requests in
flight finish on the old version while new ones get the new one; the old model is freed when its
last request is done. A version that fails to load is logged, tagged `serve.load_error` on the
version (visible in the MLflow UI) and not tried again while the alias stays on it (a promotion
back onto it later tries once more); the old version keeps serving. While a new version loads,
both are in memory. The `candidate` alias is followed the same way, with one difference: when it is
removed (the guard promoted or discarded the candidate) its follower drops the version, so no request
goes to a candidate that is gone; a champion is kept serving whatever happens to its alias.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from serve.backend import LoadedVersion, LoadError, load_version
from tunegate.registry import CANDIDATE, CHAMPION, get_alias

log = logging.getLogger(__name__)


class ChampionFollower:
    def __init__(self, client, model_name: str, poll_seconds: float = 2.0, loader=load_version, alias: str = CHAMPION):
        self.client = client
        self.model_name = model_name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.loader = loader
        self.current: LoadedVersion | None = None
        self.failed: dict[str, str] = {}
        self.champion: str | None = None  # what the registry says, which may be a version that failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Read the alias; load and switch when it names a new version. True when it switched."""
        target = get_alias(self.client, self.model_name, self.alias)
        if target is None and self.alias == CANDIDATE and self.current is not None:
            log.info("%s: alias candidate removed; version %s no longer serves", self.model_name, self.current.version)
            self.current = None
        moved = (str(target.version) if target is not None else None) != self.champion
        self.champion = str(target.version) if target is not None else None
        if target is None or (self.champion in self.failed and not moved):
            return False  # a version that failed is tried again only when the alias moves to it again
        if self.current is not None and self.current.version == self.champion:
            return False
        old = self.current.version if self.current is not None else None
        try:
            loaded = self.loader(self.client, self.model_name, self.champion)
        except LoadError as err:
            self.failed[self.champion] = str(err)
            log.error("not switching %s from version %s to %s: %s [alias %s]", self.model_name, old, self.champion,
                      err, self.alias)
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.client.set_model_version_tag(self.model_name, self.champion, "serve.load_error",
                                              f"{stamp} {str(err)[:1000]}")
            return False
        self.current = loaded  # one reference assignment: a request sees the old or the new version, whole
        self.failed.pop(loaded.version, None)
        log.info("serving %s version %s as %s (was %s); loaded in %.1f s", self.model_name, loaded.version,
                 self.alias, old, loaded.load_seconds)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name=f"{self.alias}-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
            except Exception:  # the registry unreachable for a while: keep serving, try again
                log.exception("checking the %s of %s failed; still serving version %s", self.alias, self.model_name,
                              self.current.version if self.current else None)
                time.sleep(self.poll_seconds)
