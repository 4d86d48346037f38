"""MLflow store and registry access: experiment setup, the champion alias, version tags.

The store is sqlite under mlruns/ (MLflow 3.13+ rejects the plain file store). Aliases
(`champion`, `previous`) mark what is deployed; stages are deprecated and unused.
"""

from __future__ import annotations

from pathlib import Path

from tunegate.config import TrackingConfig

CHAMPION, PREVIOUS = "champion", "previous"


def connect(tracking: TrackingConfig):
    """Point MLflow at the store, create the experiment if needed; return (client, experiment_id)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        artifacts = Path(tracking.artifact_root).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        exp_id = client.create_experiment(tracking.experiment, artifact_location=artifacts.as_uri())
    else:
        exp_id = exp.experiment_id
    return client, exp_id


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
                model_name, description="LoRA adapters fine-tuned by tunegate; `champion` is what serves."
            )
        except MlflowException:  # created concurrently by another run
            client.get_registered_model(model_name)


def download_version(client, version, dst: Path) -> str:
    """Download a version's adapter files; return the local folder."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst))
