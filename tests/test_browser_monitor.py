"""Monitoring in a real browser: `tunegate monitor` on real traces, then the MLflow UI compares the versions.

    pytest -m slow tests/test_browser_monitor.py    # ~3.5 min on 2 cores; screenshots -> docs/screenshots/

Served traffic for two versions (tests/served_traffic.py: v1 downvoted 3 of 5 ratings, v2 1 of 2) is
logged by the real command line, which runs the monitor-serving flow; `mlflow ui` serves the store
and Debian's chromium selects both monitoring runs and compares them, as a reviewer would. The second
test does the same for a canary's day: the champion's and the candidate's arm side by side.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from cli.main import stop_uis, wait_http
from conftest import ROOT
from live_stack import free_port
from served_traffic import traffic
from test_browser_e2e import ARGS, CHROMIUM, SHOTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"),
]


def monitor_day(tracking, tmp_path) -> str:
    """`tunegate monitor` for 2026-11-30 as a person runs it (its flow run on a temporary Prefect server); stdout."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the command's flow run uses a temporary local Prefect server
    sets = [a for k, v in tracking.model_dump().items() for a in ("--set", f"tracking.{k}={v}")]
    out = subprocess.run([sys.executable, "-m", "cli", "monitor", "--config", "configs/tiny.yaml", *sets,
                          "--day", "2026-11-30"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@contextmanager
def mlflow_ui_page(tracking, tmp_path):
    """`mlflow ui` on the store and a chromium page; yields (the UI's URL, the page); both stopped after."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                           tracking.tracking_uri, "--host", "127.0.0.1", "--port", str(port)],
                          start_new_session=True, stdout=open(tmp_path / "mlflow-ui.log", "w"),
                          stderr=subprocess.STDOUT)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", ui, 120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                yield url, browser.new_page(viewport={"width": 1440, "height": 1000})
            finally:
                browser.close()
    finally:
        stop_uis([ui])


def compare_downvote_rates(page, url: str, experiment_id: str, rates: dict[str, str]) -> None:
    """Select the two monitoring runs, Compare, and check each run's downvote_rate sits in its own column."""
    page.goto(f"{url}/#/experiments/{experiment_id}/runs")
    for run in rates:
        page.get_by_text(run).first.wait_for(timeout=60_000)
    unchecked = page.get_by_label("Press Space to toggle row selection (unchecked)")
    for _ in range(2):  # select both runs, then Compare
        unchecked.first.click()
    page.get_by_role("button", name="Compare").first.click()
    page.wait_for_url(re.compile(r".*compare-runs.*"))
    page.get_by_role("button", name="Close").first.click()  # the assistant side panel
    page.get_by_text("Visualizations").first.click()  # fold the plots: the metrics table moves up
    metric = page.get_by_text("downvote_rate", exact=True).first  # a virtualized grid, no <tr>
    metric.scroll_into_view_if_needed()
    row_y = metric.bounding_box()["y"]
    header = page.locator("tr", has=page.get_by_text("Run Name:", exact=True))
    for run, downvote_rate in rates.items():
        column_x = header.get_by_text(run, exact=True).bounding_box()["x"]
        # The value sits on the metric's row, in that run's column.
        on_row = [box["x"] for box in (e.bounding_box() for e in page.get_by_text(downvote_rate,
                  exact=True).all()) if box and abs(box["y"] - row_y) < 10]
        assert on_row and abs(on_row[0] - column_x) < 5, (run, on_row, column_x)
    page.wait_for_timeout(1000)


def test_the_mlflow_ui_shows_the_old_versions_downvote_rate_next_to_the_new_ones(tracking, tmp_path):
    from mlflow import MlflowClient

    traffic(tracking)
    out = monitor_day(tracking, tmp_path)
    assert "| test-model | 1 | 4 | 0 | 75.0% (3/4) | 60.0% (3/5) | 250.0 / 385.0 |" in out

    experiment_id = MlflowClient(tracking.tracking_uri).get_experiment_by_name("test-monitoring").experiment_id
    serving_id = MlflowClient(tracking.tracking_uri).get_experiment_by_name("test-serving").experiment_id
    with mlflow_ui_page(tracking, tmp_path) as (url, page):
        compare_downvote_rates(page, url, experiment_id, {"test-model v1 2026-11-30": "0.6",
                                                          "test-model v2 2026-11-30": "0.5"})
        page.screenshot(path=str(SHOTS / "mlflow-monitoring.png"))

        page.goto(f"{url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        page.get_by_text("downvote_rate").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(SHOTS / "mlflow-monitoring-charts.png"))

        # The served requests themselves: MLflow's trace view lists them with the users' ratings.
        page.set_viewport_size({"width": 2200, "height": 1000})  # room for the assessment columns
        page.goto(f"{url}/#/experiments/{serving_id}/traces")
        page.get_by_text("user_rating").first.wait_for(timeout=60_000)
        if page.get_by_role("button", name="Got it").count():  # MLflow's "Detect Issues" tip
            page.get_by_role("button", name="Got it").first.click()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "mlflow-traces-feedback.png"))


def test_the_mlflow_ui_compares_a_canarys_two_arms_side_by_side(tracking, tmp_path):
    """A canary's day: `tunegate monitor` logs one run per arm; MLflow's compare view puts the champion's and the
    candidate's downvote rates next to each other (screenshot docs/screenshots/monitor-two-arms.png)."""
    from mlflow import MlflowClient

    from served_traffic import canary_traffic

    canary_traffic(tracking)
    out = monitor_day(tracking, tmp_path)
    assert "| test-model | 1 | 10 | 0 | 100.0% (10/10) | 30.0% (3/10) | 95.0 / 135.5 | champion |" in out
    assert "| test-model | 2 | 5 | 0 | 100.0% (5/5) | 20.0% (1/5) | 70.0 / 88.0 | candidate |" in out

    experiment_id = MlflowClient(tracking.tracking_uri).get_experiment_by_name("test-monitoring").experiment_id
    with mlflow_ui_page(tracking, tmp_path) as (url, page):
        compare_downvote_rates(page, url, experiment_id, {"test-model v1 2026-11-30": "0.3",
                                                          "test-model v2 candidate 2026-11-30": "0.2"})
        page.screenshot(path=str(SHOTS / "monitor-two-arms.png"))
