"""MLflow store and registry access: experiments, the champion alias and its lock, version tags.

The store is sqlite under mlruns/ (MLflow 3.13+ rejects the plain file store). Aliases
(`champion`, `previous`, and `candidate` during a canary) mark what is deployed; stages are deprecated and unused.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tunegate.config import TrackingConfig, embedded, sqlite_db

CHAMPION, PREVIOUS = "champion", "previous"
CANDIDATE = "candidate"  # a passed version serving a share of traffic before promotion (serve.canary)
EVALS_SUFFIX = "-evals"  # evaluation runs live in their own experiment, next to the pipeline runs
SERVING_SUFFIX = "-serving"  # traces of served requests, with users' ratings and corrections
MONITORING_SUFFIX = "-monitoring"  # one run per model version and day of served traffic (tasks/monitor.py)
SWEEPS_SUFFIX = "-sweeps"  # one parent run per sweep, a child run per trial (tasks/sweep.py, tasks/trial.py)


def connect(tracking: TrackingConfig, experiment: str | None = None):
    """Point MLflow at the store, create the experiment if needed; return (client, experiment_id)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri
    name = experiment or tracking.experiment
    if embedded(uri):
        sqlite_db(uri).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return client, exp.experiment_id
    location = None  # a tracking server picks it: mlflow-artifacts:/..., proxied to --artifacts-destination
    if embedded(uri):
        artifacts = Path(tracking.artifact_root).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        return client, client.get_experiment_by_name(name).experiment_id


def artifact_source(tracking_uri: str, run_id: str, path: str) -> str:
    """Where a run's artifact can be read, as a dataset source MLflow resolves: the file itself when embedded; the
    server's download URL with a tracking server (MLflow has no dataset source for mlflow-artifacts:/ URIs)."""
    import mlflow

    if embedded(tracking_uri):
        return mlflow.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    return f"{tracking_uri.rstrip('/')}/get-artifact?path={path}&run_uuid={run_id}"


def serving_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment that holds the served champion's traces and their feedback."""
    return connect(tracking, tracking.experiment + SERVING_SUFFIX)


def monitoring_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment with one run per model version and day of served traffic."""
    return connect(tracking, tracking.experiment + MONITORING_SUFFIX)


def eval_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment that holds one run per computed evaluation."""
    return connect(tracking, tracking.experiment + EVALS_SUFFIX)


def sweep_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the experiment with the sweeps: a run per sweep, its trials as child runs."""
    return connect(tracking, tracking.experiment + SWEEPS_SUFFIX)


@contextmanager
def alias_lock(tracking: TrackingConfig, timeout_s: float = 300):
    """Hold the lock that makes "read champion, check, set previous, set champion" one step.

    MLflow sets one alias per call and has no compare-and-set, so two promotions at once can both
    read the same old champion: one of them then points `previous` at a version that was never
    the champion it replaced. Embedded (sqlite): a file lock next to the DB, which is local to one
    machine anyway. With a tracking server: a Prefect global concurrency limit of 1 per registered
    model, held on the Prefect server that every machine of the team talks to; its lease expires if
    the holder dies, so a killed run cannot keep the lock.
    """
    uri = tracking.tracking_uri
    if embedded(uri):
        from filelock import FileLock

        path = sqlite_db(uri).resolve().with_suffix(".aliases.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path), timeout=timeout_s):
            yield
        return
    with promotion_slot(tracking.registered_model, timeout_s):
        yield


@contextmanager
def promotion_slot(model_name: str, timeout_s: float):
    """One slot of the global concurrency limit `tunegate-promotion-<model>` (created with limit 1 if missing)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "tracking.tracking_uri is a server, so the promotion lock is a Prefect global concurrency limit on the "
            "team's Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4242/api, see `make team-up`)")
    name = f"tunegate-promotion-{model_name}"
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # created at the same moment by another promotion
                pass
        else:
            if limit.limit != 1 or not limit.active:
                raise RuntimeError(f"Prefect concurrency limit {name} must be active with limit 1 (it is "
                                   f"{'active' if limit.active else 'inactive'}, limit {limit.limit}): it is the "
                                   "promotion lock")
    # strict: a limit that vanished must not turn the lock into a no-op
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=60, strict=True):
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
