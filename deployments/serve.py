"""Serve the deployments from this machine, without a worker or work pool (`tunegate serve`).

    tunegate ui &                      # Prefect server on :4200 and the MLflow UI on :5000
    PREFECT_API_URL=http://127.0.0.1:4200/api tunegate serve [--config configs/demo.yaml --set k=v ...]

`finetune` runs on demand from the UI form (drawn from PipelineParams, filled with the config);
`retrain-from-feedback` runs on a cron schedule in the given timezone; `monitor-serving` daily at
00:30 UTC, on the UTC day that just ended; `live-guard` every 15 minutes (flows/guard.py: rollback of a
champion users rate worse, the canary's verdict); `sweep` on demand (its form has the config's sweep section),
with `sweep-trial`, which runs one trial of a sweep as a flow run of its own (flows/sweep.py: only sweeps
started from a deployment, with their study in a database server, use it). deployments/prefect.yaml defines
the same for `prefect deploy` onto a work pool.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.finetune import finetune_pipeline
from flows.guard import live_guard
from flows.monitor_serving import monitor_serving
from flows.retrain_from_feedback import retrain_from_feedback
from flows.sweep import sweep, sweep_trial
from tunegate.config import FeedbackConfig, load_config

NIGHTLY = "0 3 * * *"
TIMEZONE = "Europe/Berlin"
MONITOR_DAILY = "30 0 * * *"  # in UTC: monitoring windows are UTC days, this one reports the day just ended
GUARD_EVERY = "*/15 * * * *"  # a bad champion serves at most ~15 minutes past the moment its ratings show it


def build_deployments(config: str = "configs/demo.yaml", overrides: list[str] = (), cron: str = NIGHTLY,
                      timezone: str = TIMEZONE, feedback: FeedbackConfig = FeedbackConfig(), suffix: str = "",
                      job_variables: dict | None = None, paused: bool = False) -> list:
    """The deployments; with job_variables they are for a work pool (deployments/team.py), whose workers
    import the flows by module path from the installed package. paused: their schedules are inactive (runs on
    demand still work)."""
    params = {**load_config(config, overrides).model_dump(), "feedback": feedback.model_dump()}
    pool = {"job_variables": job_variables, "entrypoint_type": EntrypointType.MODULE_PATH} if job_variables else {}
    return [
        finetune_pipeline.to_deployment(
            name="finetune" + suffix, parameters={"params": params}, tags=["tunegate"], **pool,
            description="Fine-tune, evaluate against the champion, promote only when the gate passes."),
        retrain_from_feedback.to_deployment(
            name="retrain-from-feedback" + suffix, schedule=Cron(cron, timezone=timezone, active=not paused),
            tags=["tunegate"],
            concurrency_limit=1,  # a second run waits (Prefect's ENQUEUE): two runs over one window train on it twice
            parameters={"params": params}, **pool,
            description="Nightly: fine-tune on the production feedback logged since the last watermark."),
        monitor_serving.to_deployment(
            name="monitor-serving" + suffix, schedule=Cron(MONITOR_DAILY, timezone="UTC", active=not paused),
            tags=["tunegate"],
            parameters={"tracking": params["tracking"]}, **pool,
            description="Daily: requests, feedback and downvote rates, latency per model version, from served traces."),
        live_guard.to_deployment(
            name="live-guard" + suffix, schedule=Cron(GUARD_EVERY, timezone="UTC", active=not paused),
            tags=["tunegate"], concurrency_limit=1,  # two guards at once would judge and move the same aliases
            parameters={"tracking": params["tracking"], "guard": params["guard"],
                        "canary": params["serve"]["canary"]}, **pool,
            description="Every 15 min: roll back a champion users rate worse than the previous version (event "
                        "tunegate.guard.rolled_back); promote or discard a canary."),
        sweep.to_deployment(
            name="sweep" + suffix, parameters={"params": params}, tags=["tunegate"], **pool,
            description="Hyperparameter search: Optuna trials over the sweep section; the best trial is gated like "
                        "any run."),
        sweep_trial.to_deployment(  # found by the sweep as <its deployment's name>-trial (flows/sweep.py)
            name="sweep" + suffix + "-trial", tags=["tunegate"], **pool,
            description="One trial of a sweep, started by the sweep deployment on any free worker."),
    ]


def serve_deployments(config: str = "configs/demo.yaml", overrides: list[str] = (), cron: str = NIGHTLY,
                      timezone: str = TIMEZONE, feedback: FeedbackConfig = FeedbackConfig(),
                      paused: bool = False) -> None:
    """Register the deployments and run their flow runs in subprocesses until Ctrl-C."""
    serve(*build_deployments(config, overrides, cron, timezone, feedback, paused=paused))


if __name__ == "__main__":
    serve_deployments()
