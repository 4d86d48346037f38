"""Team mode: concurrent runs and faults against the team's servers (PostgreSQL, mlflow server, Prefect server,
two process workers), started by `make team-up`.

    make team-up && make test-team && make team-down      # ~7 min on 2 cores

Each test deploys the tiny config under its own names (experiment, registered model, deployment suffix)
and starts flow runs through the Prefect API, as the UI does; the workers pick them up. The only thing
that tells the pipeline it runs in team mode is MLFLOW_TRACKING_URI and PREFECT_API_URL.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from deployments import team
from live_stack import wait_for
from tasks.sft_training import COMPLETE_MARKER
from tunegate.config import FeedbackConfig, load_config

pytestmark = pytest.mark.team

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# what a run that failed from the lock, the database or a server looks like
INFRA_ERRORS = ("OperationalError", "ConcurrencySlot", "could not connect", "TimeoutError", "ConnectError",
                "MlflowException", "Lock")


@pytest.fixture(scope="module")
def stack():
    s = team.settings()
    down = [name for name in team.services(s) if not team.healthy(name, s)]
    if down:
        pytest.fail(f"the team stack is not up ({', '.join(down)} down): run `make team-up` first")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = team.client_env(s)
    with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        for key, value in env.items():
            mp.setenv(key, value)
        yield s


@pytest.fixture()
def deploy_tiny(stack, tmp_path):
    """Deploy the tiny config's deployments under fresh names; returns (uid, overrides) for the run parameters.
    They are deleted afterwards, with the runs their schedules made."""
    from prefect.client.orchestration import get_client

    made = []

    def deploy(*overrides: str) -> tuple[str, list[str]]:
        uid = uuid.uuid4().hex[:8]
        sets = [f"tracking.tracking_uri={os.environ['MLFLOW_TRACKING_URI']}",  # the team's server, as on a laptop
                f"tracking.experiment=team-{uid}", f"tracking.registered_model=team-model-{uid}",
                f"output_dir={tmp_path / 'outputs'}", "sft.max_steps=12", "dpo.max_steps=1", *overrides]
        # paused: a nightly tick during the test would add a version nobody started
        made.extend(team.deploy(stack, "configs/tiny.yaml", sets, suffix=f"-{uid}", paused=True))
        return uid, sets

    yield deploy
    with get_client(sync_client=True) as client:
        for deployment_id in made:
            client.delete_deployment(deployment_id)


def tiny(sets: list[str]) -> dict:
    """The tiny config with these overrides, as the flow's `params` parameter."""
    return load_config("configs/tiny.yaml", sets).model_dump()


def start_run(deployment: str, parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0)


def finished(run_ids: list, seconds: float) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        def all_done():
            runs = [client.read_flow_run(i) for i in run_ids]
            return runs if all(r.state and r.state.type.value in TERMINAL for r in runs) else None

        return wait_for(all_done, seconds, f"flow runs {run_ids} to finish")


def state_of(run_id, seconds: float, wanted: str):
    """Wait until a flow run is in state `wanted` (e.g. CRASHED)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return wait_for(lambda: (lambda run: run if run.state.type.value == wanted else None)(
            client.read_flow_run(run_id)), seconds, f"flow run {run_id} to be {wanted}")


def running_task(run_id, task: str, seconds: float = 600):
    """Wait until the flow run's task `task` (e.g. register) is running; polled often, as it may be short."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        def running():
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            if any(t.name.startswith(task) and t.state.type.value == "RUNNING" for t in tasks):
                return True
            if client.read_flow_run(run_id).state.type.value in TERMINAL:
                raise AssertionError(f"flow run {run_id} ended before its task {task} ran")
            return False

        wait_for(running, seconds, f"task {task} of flow run {run_id} to run", every=0.3)


def versions(model: str) -> list:
    from mlflow import MlflowClient

    return MlflowClient().search_model_versions(f"name='{model}'")


def alias_holders(model: str, alias: str) -> list[str]:
    """The versions carrying alias, each read on its own (search results leave aliases out)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    return [v.version for v in versions(model) if alias in client.get_model_version(model, v.version).aliases]


def assert_registry_consistent(model: str) -> None:
    """One champion; `previous` is the one it replaced; every promotion was judged against what it replaced;
    no version without a gate verdict."""
    all_versions = versions(model)
    for v in all_versions:
        assert v.tags.get("gate") not in (None, "pending"), f"version {v.version} has no gate verdict: {v.tags}"
        if "promotion.replaced" in v.tags and v.tags.get("promotion") == "gate":
            assert v.tags["promotion.judged_against"] == v.tags["promotion.replaced"], v.tags
    (champion,) = alias_holders(model, "champion")
    replaced = next(v for v in all_versions if v.version == champion).tags["promotion.replaced"]
    assert alias_holders(model, "previous") == ([] if replaced == "None" else [replaced])


def worker_of(run_id) -> str:
    """Which worker submitted the flow run, from the workers' logs."""
    for name in team.workers(team.settings()):
        log = Path(team.settings()["TEAM_DIR"]) / "logs" / f"{name}.log"
        if str(run_id) in log.read_text(errors="replace"):
            return name
    raise AssertionError(f"no worker log mentions flow run {run_id}")


def test_three_finetunes_and_a_retrain_at_once_leave_one_champion_judged_against_what_it_replaced(
        stack, deploy_tiny, tmp_path):
    from mlflow import MlflowClient

    uid, sets = deploy_tiny()
    model = f"team-model-{uid}"
    seed = start_run(f"finetune-pipeline/finetune-{uid}", {"params": load_config("configs/tiny.yaml", sets + [
        "name=seed"]).model_dump()})
    (seeded,) = finished([seed.id], 600)
    assert seeded.state.type.value == "COMPLETED", seeded.state.message
    assert alias_holders(model, "champion") == ["1"]

    # Three people start finetunes (different learning rates) and the nightly retrain fires, all at once.
    params = [load_config("configs/tiny.yaml", sets + [f"name=person{i}", f"sft.learning_rate={lr}"]).model_dump()
              for i, lr in enumerate((1.5e-3, 2.5e-3, 3e-3))]
    feedback = FeedbackConfig(logs=str(ROOT / "data/feedback/*.jsonl"), watermark_file=str(tmp_path / "wm.json"),
                              work_dir=str(tmp_path / "feedback")).model_dump()
    registry_ms, stop = [], threading.Event()

    def probe():  # what a reviewer's laptop sees while the runs go: registry reads through the server
        client = MlflowClient()
        while not stop.is_set():
            began = time.perf_counter()
            client.search_model_versions(f"name='{model}'")
            client.get_model_version_by_alias(model, "champion")
            registry_ms.append((time.perf_counter() - began) * 1000 / 2)
            time.sleep(0.5)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    began = time.monotonic()
    runs = [start_run(f"finetune-pipeline/finetune-{uid}", {"params": p}) for p in params]
    runs.append(start_run(f"retrain-from-feedback/retrain-from-feedback-{uid}",
                          {"params": {**load_config("configs/tiny.yaml", sets).model_dump(), "feedback": feedback}}))
    done = finished([r.id for r in runs], 1500)
    wall = time.monotonic() - began
    stop.set()
    prober.join()

    starts = [r.start_time for r in done]
    ends = [r.end_time for r in done]
    t0 = min(starts)
    for r in done:
        print(f"{r.name:32} {worker_of(r.id):9} {(r.start_time - t0).total_seconds():6.1f} s -> "
              f"{(r.end_time - t0).total_seconds():6.1f} s  {r.state.type.value:9} {(r.state.message or '')[:90]}")
    assert max(starts) < min(ends), "the four runs never ran at the same time"
    assert {worker_of(r.id) for r in done} == set(team.workers(stack)), "both workers should have picked up runs"
    for r in done:
        message = r.state.message or ""
        assert r.state.type.value == "COMPLETED" or "GateBlocked" in message or "StaleBaseline" in message, message
        assert not any(word in message for word in INFRA_ERRORS), (r.name, message)
    assert_registry_consistent(model)
    assert len(versions(model)) == 5  # the seed and the four candidates, each fully registered
    client = MlflowClient()
    for v in versions(model):  # the gate table and the lineage, read back through the server
        table = Path(client.download_artifacts(v.run_id, "gate/decision.md", str(tmp_path / v.version))).read_text()
        assert "| tunegate_domain |" in table.replace("`", "") and v.tags["data_hash"]
    summaries = [json.loads(f.read_text()) for f in (tmp_path / "outputs").glob("*/summary.json")]
    # A champion is never scored twice: its scores as a candidate are cached by content and reused as a baseline.
    judged = [s for s in summaries if s["baseline"].startswith("champion")]
    assert len(judged) == 4 and all(s["eval_cache_hits"]["baseline"] for s in judged), summaries

    p95 = statistics.quantiles(registry_ms, n=20)[-1]
    numbers = {"runs": len(done), "wall_s": round(wall, 1), "runs_per_min": round(len(done) / wall * 60, 2),
               "registry_calls": len(registry_ms), "registry_p50_ms": round(statistics.median(registry_ms), 1),
               "registry_p95_ms": round(p95, 1), "when": datetime.now().isoformat(timespec="seconds")}
    print("team concurrency:", json.dumps(numbers))
    out = ROOT / "outputs" / "team-concurrency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(numbers, indent=2))


def test_mlflow_server_killed_during_registration_the_run_waits_for_it_and_registers_once(stack, deploy_tiny, tmp_path):
    uid, sets = deploy_tiny()
    model = f"team-model-{uid}"
    run = start_run(f"finetune-pipeline/finetune-{uid}", {"params": tiny(sets)})
    running_task(run.id, "register")
    team.stop(stack, "mlflow", signal.SIGKILL)
    assert not team.healthy("mlflow", stack)
    time.sleep(8)
    team.start(stack, "mlflow")
    (done,) = finished([run.id], 600)
    assert done.state.type.value == "COMPLETED", done.state.message
    (version,) = versions(model)  # registered once, not twice
    assert version.tags["gate"] == "passed" and alias_holders(model, "champion") == [version.version]
    from tunegate.registry import download_version

    weights = Path(download_version(__import__("mlflow").MlflowClient(), version, tmp_path / "weights"))
    assert (weights / "adapter_model.safetensors").stat().st_size > 0  # the artifacts went through, whole


def flow_run_processes(worker: str, s: dict) -> list[psutil.Process]:
    leader = psutil.Process(int(team.pid_file(s, worker).read_text()))
    return [leader, *leader.children(recursive=True)]


def test_a_worker_killed_during_training_crashes_the_run_and_a_rerun_resumes_from_the_checkpoint(stack, deploy_tiny,
                                                                                                tmp_path):
    uid, sets = deploy_tiny("sft.max_steps=80", "sft.save_steps=10")
    params = load_config("configs/tiny.yaml", sets).model_dump()
    run = start_run(f"finetune-pipeline/finetune-{uid}", {"params": params})
    running_task(run.id, "sft")
    checkpoints = tmp_path / "outputs" / "checkpoints"
    wait_for(lambda: list(checkpoints.glob(f"*/checkpoint-20/{COMPLETE_MARKER}")), 300, "checkpoint-20", every=0.5)
    assert list(checkpoints.glob("*/checkpoint-*")), "no checkpoint before the kill"
    worker = worker_of(run.id)
    for proc in flow_run_processes(worker, stack):  # the machine dies: the worker and the run it started
        proc.kill()
    crashed = state_of(run.id, 30 + int(stack["TEAM_HEARTBEAT_S"]) + int(stack["TEAM_CRASH_AFTER_S"]) + 120, "CRASHED")
    assert "heartbeat" in crashed.state.message.lower()
    team.start(stack, worker)

    rerun = start_run(f"finetune-pipeline/finetune-{uid}", {"params": params})
    (done,) = finished([rerun.id], 900)
    assert done.state.type.value in ("COMPLETED", "FAILED"), done.state.message
    from mlflow import MlflowClient

    (version,) = versions(f"team-model-{uid}")
    summary = MlflowClient().download_artifacts(version.run_id, "train/sft_summary.json", str(tmp_path))
    sft = json.loads(Path(summary).read_text())
    assert sft["resumed_at_step"] >= 20 and sft["steps"] == 80, sft


def test_postgres_stopped_briefly_mid_run_the_run_completes(stack, deploy_tiny, tmp_path):
    uid, sets = deploy_tiny("sft.max_steps=60")
    model = f"team-model-{uid}"
    run = start_run(f"finetune-pipeline/finetune-{uid}", {"params": tiny(sets)})
    running_task(run.id, "sft")
    team.stop(stack, "postgres")
    assert not team.healthy("postgres", stack)
    time.sleep(10)
    team.start(stack, "postgres")
    (done,) = finished([run.id], 600)
    assert done.state.type.value == "COMPLETED", done.state.message
    (version,) = versions(model)
    assert version.tags["gate"] == "passed" and alias_holders(model, "champion") == [version.version]


def test_a_second_team_up_leaves_the_running_stack_alone_and_everything_listens_on_loopback_only(stack):
    import subprocess
    import sys

    pids = {name: team.pid_file(stack, name).read_text() for name in team.services(stack) if name != "postgres"}
    again = subprocess.run([sys.executable, "-m", "deployments.team", "up"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    for name in team.services(stack):
        assert f"{name}: already running" in again.stdout
    assert pids == {name: team.pid_file(stack, name).read_text() for name in pids}
    ports = {int(stack[k]) for k in ("TEAM_PG_PORT", "TEAM_MLFLOW_PORT", "TEAM_PREFECT_PORT")}
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
    assert {port for _, port in listening} == ports and {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def test_a_sweep_runs_its_trials_on_both_workers_at_once_and_gates_the_best(stack, deploy_tiny, tmp_path):
    import optuna
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    # 3 trials at once: the sweep's own flow run holds one of the pool's 4 slots (2 workers x --limit 2), so one
    # worker alone cannot take all three; 1 torch thread each on this 2-core machine. No pruning: with trials side
    # by side, which one a pruner stops depends on timing, and this test is about where they run.
    # The study in the team's PostgreSQL, as team.deploy sets it for the deployments' defaults (the parameters
    # passed here replace those defaults).
    uid, sets = deploy_tiny(f"sweep.storage={os.environ['TUNEGATE_SWEEP_STORAGE']}", "sweep.trials=4",
                            "sweep.parallel=3", "sweep.trial_threads=1", "sweep.eval_steps=4", "sweep.prune=false",
                            "sweep.space={learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true}}")
    began = time.monotonic()
    run = start_run(f"sweep/sweep-{uid}", {"params": tiny(sets)})
    (done,) = finished([run.id], 1500)
    wall = time.monotonic() - began
    assert done.state.type.value == "COMPLETED", done.state.message

    with get_client(sync_client=True) as client:
        trials = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[f"sweep-{uid}-trial"])))
    trials = sorted(trials, key=lambda r: r.start_time)
    t0 = min(r.start_time for r in [done, *trials])
    print(f"\nsweep {done.name} on {worker_of(done.id)}: {wall:.0f} s wall")
    for r in [done, *trials]:  # the timeline: which worker ran what, when (seconds from the sweep's start)
        print(f"  {r.name:48} {worker_of(r.id):9} {(r.start_time - t0).total_seconds():6.1f} s -> "
              f"{(r.end_time - t0).total_seconds():6.1f} s  {r.state.type.value}")
    assert len(trials) == 4 and all(r.state.type.value == "COMPLETED" for r in trials)
    assert {worker_of(r.id) for r in trials} == set(team.workers(stack)), "both workers should have run trials"
    assert any(a.start_time < b.end_time and b.start_time < a.end_time and worker_of(a.id) != worker_of(b.id)
               for a in trials for b in trials if a.id != b.id), "no two trials overlapped on different workers"

    # The study is in the team's PostgreSQL, every trial finished; each is an MLflow child run of the sweep's run.
    study_name = trials[0].name.rsplit("-trial-", 1)[0]
    study = optuna.load_study(study_name=study_name, storage=team.pg_url(stack, "optuna"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(f"team-{uid}-sweeps").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["tunegate.kind"] == "sweep"]
    assert sum(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs) == 4
    assert "sweep/parallel_coordinate.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    # The best trial went through the gate like any run: one registered version, with its verdict.
    (version,) = versions(f"team-model-{uid}")
    assert version.tags["gate"] == "passed" and parent.data.tags["sweep.gate"] == "passed"
    assert json.loads(version.tags["config"])["sft"]["learning_rate"] == study.best_params["learning_rate"]
