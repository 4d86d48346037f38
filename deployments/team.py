"""Team mode on one machine: PostgreSQL, an MLflow tracking server, a Prefect server and two workers.

    make team-up        # python -m deployments.team up: start what is not running, deploy the flows
    make team-down      # python -m deployments.team down
    python -m deployments.team status | env | stop SERVICE | start SERVICE

The same pieces a team runs on servers: PostgreSQL holds both servers' databases; `mlflow server`
proxies artifacts (clients read and write them as mlflow-artifacts:, never a local folder); the
Prefect server keeps flow runs, and a `process` work pool's workers run them. Ports and paths come
from deployments/team.env (TEAM_* variables in the environment win). Everything binds to TEAM_HOST.
State lives under TEAM_DIR: pg/ (the database cluster), artifacts/, prefect/, logs/, run/ (pid files).
A second `up` finds each service healthy and leaves it alone.

Point a laptop or a shell at it with the variables `env` prints:
    eval "$(python -m deployments.team env)"
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = Path(__file__).with_name("team.env")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_SUPERUSER, PG_ROLE, DATABASES = "postgres", "tunegate", ("mlflow", "prefect", "optuna")  # optuna: sweeps' studies
CRASH_AUTOMATION = "tunegate: mark flow runs without heartbeats Crashed"


def settings() -> dict[str, str]:
    """team.env, with TEAM_* variables from the environment taking precedence."""
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    values |= {k: v for k, v in os.environ.items() if k.startswith("TEAM_")}
    values["TEAM_DIR"] = str((ROOT / values["TEAM_DIR"]).resolve())
    return values


def client_env(s: dict[str, str]) -> dict[str, str]:
    """What a client (a laptop, a test, a worker) sets to use the team's servers: only URLs (the third is where
    sweeps keep their Optuna studies, read by sweep.storage's default)."""
    host = s["TEAM_HOST"]
    return {"MLFLOW_TRACKING_URI": f"http://{host}:{s['TEAM_MLFLOW_PORT']}",
            "PREFECT_API_URL": f"http://{host}:{s['TEAM_PREFECT_PORT']}/api",
            "TUNEGATE_SWEEP_STORAGE": pg_url(s, "optuna")}


def pg_url(s: dict[str, str], database: str, driver: str = "postgresql") -> str:
    # trust on loopback only (initdb below); on real servers use scram-sha-256 and a secret store
    return f"{driver}://{PG_ROLE}@{s['TEAM_HOST']}:{s['TEAM_PG_PORT']}/{database}"


def pg_bin(name: str) -> str:
    found = PG_BIN / name
    if found.exists():
        return str(found)
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    if bindir.returncode == 0 and (Path(bindir.stdout.strip()) / name).exists():
        return str(Path(bindir.stdout.strip()) / name)
    raise SystemExit(f"PostgreSQL's {name} not found under {PG_BIN} or `pg_config --bindir`: install PostgreSQL 15")


def as_pg_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", PG_SUPERUSER, "--", *cmd] if os.geteuid() == 0 else cmd


def healthy(service: str, s: dict[str, str]) -> bool:
    host = s["TEAM_HOST"]
    if service == "postgres":
        return subprocess.run([pg_bin("pg_isready"), "-q", "-h", host, "-p", s["TEAM_PG_PORT"]]).returncode == 0
    url = {"mlflow": f"http://{host}:{s['TEAM_MLFLOW_PORT']}/health",
           "prefect": f"http://{host}:{s['TEAM_PREFECT_PORT']}/api/health"}.get(service)
    if url is None:  # a worker: its process is alive
        return pid_alive(s, service)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(service: str, s: dict[str, str], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if healthy(service, s):
            return
        if service != "postgres" and not pid_alive(s, service):
            break
        time.sleep(1)
    log = Path(s["TEAM_DIR"]) / "logs" / f"{service}.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else "(no log)"
    raise SystemExit(f"{service} did not become healthy within {seconds:.0f} s; last lines of {log}:\n{tail}")


def pid_file(s: dict[str, str], service: str) -> Path:
    return Path(s["TEAM_DIR"]) / "run" / f"{service}.pid"


def pid_alive(s: dict[str, str], service: str) -> bool:
    path = pid_file(s, service)
    if not path.exists():
        return False
    try:
        os.kill(int(path.read_text()), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False


def spawn(s: dict[str, str], service: str, cmd: list[str], env: dict[str, str | None]) -> None:
    """Start a server in its own process group (uvicorn workers die with it), log to logs/<service>.log;
    env is added to this process's environment, a None value removes that variable."""
    log = Path(s["TEAM_DIR"]) / "logs" / f"{service}.log"
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=merged, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file(s, service).write_text(str(proc.pid))


def pg_paths(s: dict[str, str]) -> tuple[Path, Path]:
    """(data folder, log file): TEAM_DIR/pg and logs/postgres.log; when run as root from a folder the `postgres`
    user cannot enter (e.g. under /root), a folder of its own under /tmp named after TEAM_DIR."""
    team = Path(s["TEAM_DIR"])
    if os.geteuid() != 0 or subprocess.run(as_pg_owner(["test", "-x", str(team)])).returncode == 0:
        return team / "pg", team / "logs" / "postgres.log"
    import hashlib

    own = Path("/tmp") / f"tunegate-team-{hashlib.sha256(str(team).encode()).hexdigest()[:12]}"
    return own / "pg", own / "postgres.log"


def start_postgres(s: dict[str, str]) -> None:
    data, log = pg_paths(s)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        log.touch()
        if os.geteuid() == 0:
            for path in {data, log, log.parent} - {Path(s["TEAM_DIR"]) / "logs"}:
                shutil.chown(path, PG_SUPERUSER)
        subprocess.run(as_pg_owner([pg_bin("initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust",
                                    "-E", "UTF8", "--locale=C"]), check=True, stdout=subprocess.DEVNULL)
        with open(data / "postgresql.conf", "a") as conf:  # TCP on the loopback only, no socket in /var/run
            conf.write(f"\nlisten_addresses = '{s['TEAM_HOST']}'\nunix_socket_directories = ''\n"
                       "max_connections = 200\n")
    subprocess.run(as_pg_owner([pg_bin("pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                "-o", f"-p {s['TEAM_PG_PORT']}"]), check=True, stdout=subprocess.DEVNULL)
    wait_healthy("postgres", s, 60)
    psql = ["psql", "-h", s["TEAM_HOST"], "-p", s["TEAM_PG_PORT"], "-U", PG_SUPERUSER, "-d", "postgres", "-tAc"]
    if not subprocess.run([*psql, f"SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'"],
                          capture_output=True, text=True, check=True).stdout.strip():
        subprocess.run([*psql, f"CREATE ROLE {PG_ROLE} LOGIN"], check=True, stdout=subprocess.DEVNULL)
    for db in DATABASES:
        if not subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
                              capture_output=True, text=True, check=True).stdout.strip():
            subprocess.run([*psql, f"CREATE DATABASE {db} OWNER {PG_ROLE}"], check=True, stdout=subprocess.DEVNULL)


def stop_postgres(s: dict[str, str]) -> None:
    data, _ = pg_paths(s)
    if (data / "postmaster.pid").exists():
        subprocess.run(as_pg_owner([pg_bin("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_mlflow(s: dict[str, str]) -> None:
    bin_dir = Path(sys.executable).parent
    spawn(s, "mlflow", [str(bin_dir / "mlflow"), "server", "--backend-store-uri", pg_url(s, "mlflow"),
                        "--artifacts-destination", str(Path(s["TEAM_DIR"]) / "artifacts"),
                        "--host", s["TEAM_HOST"], "--port", s["TEAM_MLFLOW_PORT"], "--workers", "2"], {})


def prefect_env(s: dict[str, str]) -> dict[str, str]:
    return {"PREFECT_HOME": str(Path(s["TEAM_DIR"]) / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1"}


def start_prefect(s: dict[str, str]) -> None:
    # The server is the API: a PREFECT_API_URL in the caller's shell (e.g. from `env`) is not passed on.
    env = {**prefect_env(s), "PREFECT_API_DATABASE_CONNECTION_URL": pg_url(s, "prefect", "postgresql+asyncpg"),
           "PREFECT_API_URL": None}
    spawn(s, "prefect", [str(Path(sys.executable).parent / "prefect"), "server", "start",
                         "--host", s["TEAM_HOST"], "--port", s["TEAM_PREFECT_PORT"]], env)


def worker_env(s: dict[str, str]) -> dict[str, str]:
    return {**prefect_env(s), **client_env(s), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": s["TEAM_HEARTBEAT_S"],
            # the Prefect and MLflow clients retry these, so a server restart or a database blip is waited out
            "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "8"}


def start_worker(s: dict[str, str], service: str) -> None:
    spawn(s, service, [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", s["TEAM_POOL"],
                       "--type", "process", "--name", service, "--limit", "2"], worker_env(s))


def workers(s: dict[str, str]) -> list[str]:
    return [f"worker-{i}" for i in range(1, int(s["TEAM_WORKERS"]) + 1)]


def services(s: dict[str, str]) -> list[str]:
    return ["postgres", "mlflow", "prefect", *workers(s)]


def start(s: dict[str, str], service: str) -> None:
    if healthy(service, s):
        print(f"{service}: already running")
        return
    {"postgres": start_postgres, "mlflow": start_mlflow, "prefect": start_prefect}.get(
        service, lambda s: start_worker(s, service))(s)
    if service != "postgres":
        wait_healthy(service, s)
    print(f"{service}: started")


def stop(s: dict[str, str], service: str, sig: int = signal.SIGTERM) -> None:
    if service == "postgres":
        stop_postgres(s)
        return
    path = pid_file(s, service)
    if not pid_alive(s, service):
        path.unlink(missing_ok=True)
        return
    pid = int(path.read_text())
    try:
        os.killpg(pid, sig)
        for _ in range(40):
            os.killpg(pid, 0)
            time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    path.unlink(missing_ok=True)


def setup_prefect(s: dict[str, str]) -> None:
    """The work pool, and Prefect's own zombie detection: a flow run whose heartbeats stop is marked Crashed."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=s["TEAM_POOL"], type="process"))
        except ObjectAlreadyExists:
            pass
    try:
        Automation.read(name=CRASH_AUTOMATION)
    except (ObjectNotFound, ValueError):
        Automation(
            name=CRASH_AUTOMATION,
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                        "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": ["prefect.flow-run.*"]},
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=timedelta(seconds=int(s["TEAM_CRASH_AFTER_S"]))),
            actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                        message="No heartbeat: its worker or machine died. Re-run it to resume "
                                                "from its last checkpoint.")],
        ).create()


def deploy(s: dict[str, str], config: str = "configs/demo.yaml", overrides: list[str] = (),
           suffix: str = "", paused: bool = False) -> list[str]:
    """The deployments on the team's pool, run by its workers in the repository root; paused: on demand only, the
    nightly retrain, the daily monitoring and the live guard do not fire (tests, CI)."""
    from prefect import deploy as prefect_deploy

    from deployments.serve import build_deployments

    server = f"tracking.tracking_uri={client_env(s)['MLFLOW_TRACKING_URI']}"  # whatever this process's env says
    studies = f"sweep.storage={client_env(s)['TUNEGATE_SWEEP_STORAGE']}"  # sweeps spread trials over the workers
    built = build_deployments(config, [server, studies, *overrides], suffix=suffix, job_variables={"working_dir": str(ROOT)},
                              paused=paused)
    return [str(i) for i in prefect_deploy(*built, work_pool_name=s["TEAM_POOL"], build=False, push=False,
                                           print_next_steps_message=False, ignore_warnings=True)]


def up(s: dict[str, str]) -> None:
    for sub in ("logs", "run", "artifacts", "prefect"):
        (Path(s["TEAM_DIR"]) / sub).mkdir(parents=True, exist_ok=True)
    for service in ("postgres", "mlflow", "prefect"):
        start(s, service)
    os.environ.update(prefect_env(s) | client_env(s))
    setup_prefect(s)
    for service in workers(s):
        start(s, service)
    deploy(s, paused=s["TEAM_SCHEDULES"] == "off")
    print_urls(s)


def down(s: dict[str, str]) -> None:
    for service in reversed(services(s)):
        stop(s, service)
        print(f"{service}: stopped")


def print_urls(s: dict[str, str]) -> None:
    env = client_env(s)
    print(f"\nMLflow UI:  {env['MLFLOW_TRACKING_URI']}\nPrefect UI: {env['PREFECT_API_URL'].removesuffix('/api')}\n"
          f"Use them:   eval \"$(python -m deployments.team env)\"")


def main(argv: list[str]) -> int:
    s = settings()
    command, names = (argv[0] if argv else "status"), argv[1:]
    if command == "up":
        up(s)
    elif command == "down":
        down(s)
    elif command == "env":
        print("\n".join(f"export {k}={v}" for k, v in client_env(s).items()))
    elif command == "status":
        state = {service: healthy(service, s) for service in services(s)}
        print(json.dumps(state, indent=2))
        return 0 if all(state.values()) else 1
    elif command in ("start", "stop") and names:
        for service in names:
            start(s, service) if command == "start" else stop(s, service)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
