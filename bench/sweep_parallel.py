"""A sweep's trials on the team pool's two workers at once vs one after another, on the tiny model.

    make team-up                                            # PostgreSQL, MLflow server, Prefect server, 2 workers
    .venv/bin/python bench/sweep_parallel.py --trials 8 --parallel 3 1 --embedded
    make team-down

For each --parallel value the tiny config is deployed under fresh names (as tests/test_team.py does) and the
sweep deployment is started through the Prefect API, as the UI does: with 1, the sweep starts one trial flow
run at a time; with 3, three at once, and the sweep's own run holds one of the pool's four slots, so both
workers run trials. --embedded also runs `tunegate sweep` in this process's machine without the pool: trials
one after another inside the sweep's process, study in sqlite. Every sweep has the same trials (same seed,
same first trial) and then gates its best one the same way. Printed per sweep: the wall time, the trial phase
(first trial's start to last trial's end, from the Optuna study), each trial's worker, the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import cpu  # noqa: E402
from deployments import team  # noqa: E402

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def sweep_sets(out: Path, trials: int, uid: str, parallel: int) -> list[str]:
    """The tiny config's sweep: 20 SFT steps a trial, eval every 10, learning rate and warmup searched; the
    machine's cores shared by the trials that run at once (all of them for one trial at a time)."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return [f"output_dir={out}", f"tracking.experiment=bench-{uid}", f"tracking.registered_model=bench-model-{uid}",
            f"sweep.trials={trials}", "sft.max_steps=20", "sweep.eval_steps=10", "sweep.prune=false",
            f"sweep.trial_threads={threads}",
            "sweep.space={learning_rate: {low: 1.0e-3, high: 5.0e-3, log: true}, warmup_steps: {low: 1, high: 4}}",
            "sweep.first_trials=[{learning_rate: 2.0e-3, warmup_steps: 2}]"]


def worker_of(flow_run_id: str, s: dict) -> str:
    for name in team.workers(s):
        if flow_run_id and flow_run_id in (Path(s["TEAM_DIR"]) / "logs" / f"{name}.log").read_text(errors="replace"):
            return name
    return "-"


def trial_phase(storage: str, study_name: str, s: dict | None) -> dict:
    """Seconds from the first trial's start to the last trial's end, and each trial's span and worker."""
    import optuna

    trials = optuna.load_study(study_name=study_name, storage=storage).trials
    t0 = min(t.datetime_start for t in trials)
    spans = [{"trial": t.number, "state": t.state.name, "value": t.value,
              "start_s": round((t.datetime_start - t0).total_seconds(), 1),
              "end_s": round((t.datetime_complete - t0).total_seconds(), 1),
              "worker": worker_of(t.user_attrs.get("flow_run_id", ""), s) if s else "in-process"} for t in trials]
    return {"trial_phase_s": max(x["end_s"] for x in spans), "trials": spans}


def on_pool(parallel: int, trials: int, s: dict) -> dict:
    """One sweep on the team pool, started from its deployment; returns its timings."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from tunegate.config import load_config

    env = team.client_env(s)
    uid = uuid.uuid4().hex[:8]
    sets = [f"tracking.tracking_uri={env['MLFLOW_TRACKING_URI']}", f"sweep.storage={env['TUNEGATE_SWEEP_STORAGE']}",
            f"sweep.parallel={parallel}", f"run_name=bench-{uid}", *sweep_sets(Path(tempfile.mkdtemp(prefix="bench-sweep-")), trials, uid, parallel)]
    made = team.deploy(s, "configs/tiny.yaml", sets, suffix=f"-{uid}", paused=True)
    load_before = os.getloadavg()
    began = time.monotonic()
    params = load_config("configs/tiny.yaml", sets).model_dump()  # run_name fixed: the study is named after it
    run = run_deployment(f"sweep/sweep-{uid}", parameters={"params": params}, timeout=0)
    with get_client(sync_client=True) as client:
        while (state := client.read_flow_run(run.id).state).type.value not in TERMINAL:
            time.sleep(2)
        wall = time.monotonic() - began
        for deployment_id in made:
            client.delete_deployment(deployment_id)
    return {"mode": f"pool, parallel {parallel}", "state": state.type.value, "wall_s": round(wall, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            **trial_phase(env["TUNEGATE_SWEEP_STORAGE"], f"bench-{uid}", s)}


def embedded(trials: int) -> dict:
    """`tunegate sweep` without the pool: one process, its own temporary Prefect server, sqlite."""
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-embedded-"))
    uid = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                                                              "TUNEGATE_SWEEP_STORAGE")}
    env["PREFECT_HOME"] = str(out / "prefect")
    sets = [f"tracking.tracking_uri=sqlite:///{out}/mlflow.db", f"tracking.artifact_root={out}/artifacts",
            "run_name=embedded", *sweep_sets(out / "outputs", trials, uid, 1)]
    load_before = os.getloadavg()
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cli", "sweep", "configs/tiny.yaml",
                           *[a for x in sets for a in ("--set", x)]], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - began
    return {"mode": "embedded, one after another", "state": "COMPLETED" if done.returncode == 0 else "FAILED",
            "wall_s": round(wall, 1), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            **trial_phase(f"sqlite:///{out}/optuna.db", "embedded", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, nargs="*", default=[3, 1], help="sweep.parallel values, in order")
    parser.add_argument("--embedded", action="store_true", help="also run tunegate sweep without the pool")
    args = parser.parse_args()
    s = team.settings()
    os.environ.update(team.client_env(s))  # before Prefect is imported: it reads PREFECT_API_URL once
    results = [on_pool(p, args.trials, s) for p in args.parallel]
    if args.embedded:
        results.append(embedded(args.trials))
    print(json.dumps({"cpu": cpu(), "results": results}, indent=2))
    for r in results:
        print(f"{r['mode']:30} {r['state']:9} wall {r['wall_s']:7.1f} s  trial phase {r['trial_phase_s']:7.1f} s  "
              f"load {r['load_before']} -> {r['load_after']}")


if __name__ == "__main__":
    main()
