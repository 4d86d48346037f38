"""`tunegate ui` + `tunegate serve` as real processes, for the slow end-to-end tests.

Free loopback ports, their own PREFECT_HOME and MLflow store; stopped (and checked stopped) on exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from cli.serving import free_port, serve_model_process
from cli.serving import stop_process as stop
from conftest import ROOT


def api(base: str, path: str, body: dict | None = None, attempts: int = 6):
    """One Prefect API call. A 503 is retried with backoff, as Prefect's own client does: the server answers 503
    when its sqlite database was busy (SQLITE_BUSY_SNAPSHOT), which a loaded 2-core machine hits."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == attempts - 1:
                raise
        time.sleep(2 ** attempt)


def wait_for(check, seconds: float, what: str, every: float = 2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise TimeoutError(f"gave up waiting for {what} after {seconds:.0f}s")


@contextmanager
def running_stack(tmp_path: Path, serve_args: list[str]):
    """Start `tunegate ui`, then `tunegate serve --config configs/tiny.yaml SERVE_ARGS`; yield URLs and deployments."""
    pport, mport = free_port(), free_port()
    db = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{pport}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "cli"]
    ui = subprocess.Popen(cli + ["ui", "--tracking-uri", db, "--prefect-port", str(pport), "--mlflow-port", str(mport)],
                          cwd=ROOT, env=env, stdout=open(tmp_path / "ui.log", "w"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    procs = [ui]
    try:
        wait_for(lambda: "Ctrl-C stops both" in (tmp_path / "ui.log").read_text(), 180, "tunegate ui")
        printed = (tmp_path / "ui.log").read_text()
        assert f"Prefect UI: http://127.0.0.1:{pport}" in printed and f"MLflow UI:  http://127.0.0.1:{mport}" in printed
        serve = subprocess.Popen(
            cli + ["serve", "--config", "configs/tiny.yaml", "--set", f"tracking.tracking_uri={db}",
                   "--set", f"tracking.artifact_root={tmp_path}/artifacts", "--set", f"output_dir={tmp_path}/out",
                   "--set", f"tracking.ui_url=http://127.0.0.1:{mport}", *serve_args],  # the gate report's links
            cwd=ROOT, env=env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(serve)
        prefect = f"http://127.0.0.1:{pport}"
        names = {"finetune", "retrain-from-feedback", "monitor-serving", "sweep", "sweep-trial", "live-guard"}  # deployments/serve.py

        def registered():
            deps = {d["name"]: d for d in api(prefect, "/api/deployments/filter", {})}
            return deps if set(deps) == names else None

        deps = wait_for(registered, 120, "the deployments")
        yield {"prefect": prefect, "mlflow": f"http://127.0.0.1:{mport}", "deployments": deps, "tmp": tmp_path,
               "tracking_uri": db}
    finally:
        for proc in reversed(procs):
            stop(proc)
    with socket.socket() as s:  # tunegate ui stopped both servers when it was stopped
        assert s.connect_ex(("127.0.0.1", pport)) != 0


@contextmanager
def serving(tracking, log_path: Path, *extra_args: str):
    """`tunegate serve-model` (tiny config, this tracking store) on a free port, until the block ends; yields its URL."""
    args = ["--config", "configs/tiny.yaml", "--poll-seconds", "0.5", "--threads", "1", *extra_args]
    for key, value in tracking.model_dump().items():
        args += ["--set", f"tracking.{key}={value}"]
    with serve_model_process(args, log_path, cwd=ROOT) as url:
        yield url
