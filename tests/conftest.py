"""Shared fixtures: the tiny model, prepared demo data, an isolated MLflow store and Prefect."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # tasks called outside a flow
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # CLI subprocesses on a busy CI box

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"


@pytest.fixture(scope="session", autouse=True)
def _run_from_root():
    # Config paths are relative to the repository root, as in the Makefile.
    old = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from tunegate.models import build_tiny_model

    return str(build_tiny_model())


@pytest.fixture(scope="session")
def prepared(tiny_model, tmp_path_factory) -> dict:
    """The demo data ingested, validated and prepared for the tiny model."""
    from tasks.ingest import ingest_files
    from tasks.prepare import prepare_data
    from tasks.validate import validate_records
    from tunegate.config import DataConfig

    work = tmp_path_factory.mktemp("prepared")
    files = [str(DEMO / "identity.json"), str(DEMO / "alpaca_general.json")]
    data = DataConfig(domain_files=files[:1], general_files=files[1:],
                      general_holdout_file=str(DEMO / "general_holdout.json"), eval_fraction=0.15)
    ingested = ingest_files(files, work)
    report = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work, 0.2, "reject", data=data)
    out = prepare_data(Path(report["clean"]), data.general_holdout_file, tiny_model, work)
    return {**out, "report": report}


def typed_prepared(prepared: dict):
    """The `prepared` fixture as the prepare stage returns it (a typed Prepared)."""
    from tasks.prepare import Prepared
    from tasks.validate import Validated
    from tunegate.models import ResolvedModel

    report = prepared["report"]
    (Path(report["clean"]).parent / "report.json").write_text(json.dumps(report))
    fields = {k: v for k, v in prepared.items() if k in Prepared.model_fields}
    return Prepared(**fields, base=ResolvedModel(name="tiny", path=prepared["base_model_path"]),
                    validated=Validated.of(report, Path(report["clean"]).parent / "report.json"))


def typed_trained(summary: dict, prepared):
    """train_sft's summary as the sft stage returns it (a typed Trained)."""
    from tasks.sft import Trained

    return Trained(**summary, base=prepared.base, data_hash=prepared.data_hash)


@pytest.fixture()
def tracking(tmp_path):
    from tunegate.config import TrackingConfig

    return TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
        experiment="test", registered_model="test-model",
    )


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    # Cached task results live in result storage, not in the harness database: isolate both.
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings({PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage"}):
        with prefect_test_harness(server_startup_timeout=120):
            yield
