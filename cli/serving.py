"""`tunegate serve-model` as a child process: started on a free loopback port, used, stopped.

    with local_judge("bundled:smollm2-135m-instruct", Path("outputs/local-judge.log")) as endpoint:
        ...  # `tunegate run --local-judge MODEL`: endpoint = {"base_url": ..., "model": ...} for the judge

The local judge serves MODEL as it is (`--model-dir`: structured outputs on, no registry, no
tracing) for the length of one run, and stops when the run ends, also on Ctrl-C or a failed run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

JUDGE_NAME = "local-judge"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float, proc: subprocess.Popen | None = None, log_path: Path | None = None):
    """Return once GET url/health is 200; raise if `proc` exits first, TimeoutError after `seconds`."""
    import httpx

    def log_tail() -> str:
        return f"; its log ({log_path}) ends:\n{log_path.read_text()[-3000:]}" if log_path else ""

    deadline = time.monotonic() + seconds
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it served{log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 in {seconds:.0f} s{log_tail()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group a `start_new_session` child leads; SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def serve_model_process(args: list[str], log_path: Path, start_seconds: float = 120, cwd: Path | None = None):
    """`tunegate serve-model ARGS` on a free port until the block ends; yields its base URL once /health is 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve-model", *args, "--port", str(port)], cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, start_seconds, proc, log_path)
        yield url
    finally:
        stop_process(proc)


@contextmanager
def local_judge(model: str, log_path: Path, start_seconds: float = 300):
    """Yield judge.base_url and judge.model of a server of `model`, running until the block ends."""
    # One torch thread: the server shares the machine with the run that calls it.
    args = ["--model-dir", model, "--served-name", JUDGE_NAME, "--threads", "1"]
    with serve_model_process(args, log_path, start_seconds) as url:
        print(f"tunegate: local judge {model} on {url}/v1 (log: {log_path})", file=sys.stderr, flush=True)
        yield {"base_url": f"{url}/v1", "model": JUDGE_NAME}
