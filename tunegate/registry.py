"""MLflow store and registry access: experiments, the champion alias and its lock, version tags.

The store is sqlite under mlruns/ (MLflow 3.13+ rejects the plain file store). Aliases
(`champion`, `previous`) mark what is deployed; stages are deprecated and unused.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path

from tunegate.config import TrackingConfig

CHAMPION, PREVIOUS = "champion", "previous"
EVALS_SUFFIX = "-evals"  # evaluation runs live in their own experiment, next to the pipeline runs
SERVING_SUFFIX = "-serving"  # traces of served requests, with users' ratings and corrections
MONITORING_SUFFIX = "-monitoring"  # one run per model version and day of served traffic (tasks/monitor.py)


def connect(tracking: TrackingConfig, experiment: str | None = None):
    """Point MLflow at the store, create the experiment if needed; return (client, experiment_id)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri
    name = experiment or tracking.experiment
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return client, exp.experiment_id
    artifacts = Path(tracking.artifact_root).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        return client, client.create_experiment(name, artifact_location=artifacts.as_uri())
    except MlflowException:  # created concurrently by another process
        return client, client.get_experiment_by_name(name).experiment_id


def serving_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment that holds the served champion's traces and their feedback."""
    return connect(tracking, tracking.experiment + SERVING_SUFFIX)


def monitoring_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment with one run per model version and day of served traffic."""
    return connect(tracking, tracking.experiment + MONITORING_SUFFIX)


def eval_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment that holds one run per computed evaluation."""
    return connect(tracking, tracking.experiment + EVALS_SUFFIX)


@contextmanager
def alias_lock(tracking: TrackingConfig, timeout_s: float = 120):
    """Hold the lock that makes "read champion, set previous, set champion" one step.

    MLflow sets one alias per call and has no compare-and-set, so two promotions at once can both
    read the same old champion: one of them then points `previous` at a version that was never
    the champion it replaced. A file lock next to the sqlite DB serializes every process that
    uses that store (a sqlite store is local to one machine anyway). For other URIs the lock file
    lives under ~/.cache/tunegate/locks and only serializes this machine: with a shared tracking
    server, run promotions from one place (e.g. one Prefect deployment with a concurrency limit).
    """
    from filelock import FileLock

    from tunegate.models import cache_dir

    uri = tracking.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).resolve().with_suffix(".aliases.lock")
    else:
        path = cache_dir() / "locks" / (hashlib.sha256(uri.encode()).hexdigest()[:16] + ".aliases.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout_s):
        yield


def get_alias(client, model_name: str, alias: str):
    """The model version behind an alias, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def ensure_registered_model(client, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        try:
            client.create_registered_model(
                model_name, description="Models fine-tuned by tunegate (adapters, or whole models for "
                "sft.method full); `champion` is what serves."
            )
        except MlflowException:  # created concurrently by another run
            client.get_registered_model(model_name)


def download_version(client, version, dst: Path) -> str:
    """Download a version's raw weights (the run's adapter/ or model/ folder); return the local folder.

    The version's source is the MLflow Model (MLmodel + flavor files); the raw files, byte for byte
    what was evaluated, are the run artifact named by the `weights` tag.
    """
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{version.run_id}/{version.tags['weights']}",
                                               dst_path=str(dst))
