"""End to end in a real browser: start a run from the Prefect UI form, review it in the MLflow UI.

    pytest -m slow tests/test_browser_e2e.py      # ~5 min on 2 cores; screenshots -> docs/screenshots/

`tunegate ui` (Prefect server + MLflow UI) and `tunegate serve` (both deployments, tiny config) run
as real processes on free loopback ports with their own PREFECT_HOME and MLflow store. Debian's
chromium is driven by Playwright; Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT
from live_stack import api, running_stack, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "docs" / "screenshots"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"),
]


@pytest.fixture()
def stack(tmp_path, tiny_model):
    """`tunegate ui` and `tunegate serve` as a person would start them, on free ports."""
    with running_stack(tmp_path, ["--paused", "--feedback-logs", f"{tmp_path}/no-feedback/*.jsonl"]) as running:
        yield running


def start_run_from_form(page, stack, name: str, max_steps: int) -> str:
    """Open the finetune deployment, fill two form fields, submit; return the new flow run's id."""
    dep = stack["deployments"]["finetune"]
    page.goto(f"{stack['prefect']}/deployments/deployment/{dep['id']}", wait_until="networkidle")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.get_by_text("Run name prefix, shown in Prefect and MLflow.").wait_for()
    name_box = page.get_by_text("Run name prefix, shown in Prefect and MLflow.").locator("xpath=following::textarea[1]")
    name_box.fill(name)
    name_box.scroll_into_view_if_needed()
    page.mouse.wheel(0, -200)
    page.screenshot(path=str(SHOTS / "prefect-run-form.png"))
    steps = page.get_by_text("Stop after this many optimizer steps; -1 trains num_epochs.").locator(
        "xpath=following::input[1]")
    steps.fill(str(max_steps))
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r".*tab=Runs"), timeout=30_000)  # the UI goes back to the deployment's runs

    def created():
        runs = api(stack["prefect"], "/api/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        return next((r["id"] for r in runs if r["parameters"]["params"]["name"] == name), None)

    return wait_for(created, 30, f"the flow run named {name}")


def wait_finished(stack, run_id: str) -> dict:
    def done():
        run = api(stack["prefect"], f"/api/flow_runs/{run_id}")
        return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return wait_for(done, 900, f"flow run {run_id}")


def test_start_runs_from_the_prefect_form_and_review_them_in_mlflow(stack):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            first_id = start_run_from_form(page, stack, "browser-a", 30)
            first = wait_finished(stack, first_id)
            assert first["state_type"] == "COMPLETED", first["state"]["message"]
            assert first["parameters"]["params"]["name"] == "browser-a"  # what was typed in the form
            assert first["parameters"]["params"]["sft"]["max_steps"] == 30
            page.goto(f"{stack['prefect']}/runs/flow-run/{first_id}", wait_until="networkidle")
            page.get_by_text("Completed").first.wait_for()
            page.screenshot(path=str(SHOTS / "prefect-flow-run.png"))

            second_id = start_run_from_form(page, stack, "browser-b", 12)
            second = wait_finished(stack, second_id)
            # A candidate that trained less may be blocked by the gate: the run still ends with a decision.
            assert second["state_type"] == "COMPLETED" or "Gate blocked" in second["state"]["message"]

            client = MlflowClient(stack["tracking_uri"])
            exp = client.get_experiment_by_name("tunegate")
            runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
            names = sorted(runs)
            assert len(names) == 2 and all(n.startswith("finetune-browser-") for n in names), names
            a, b = runs[names[0]], runs[names[1]]
            assert a.data.params["sft.max_steps"] == "30" and b.data.params["sft.max_steps"] == "12"
            assert set(a.data.metrics) & set(b.data.metrics) >= {"eval/tunegate_domain/token_f1",
                                                                 "eval/tunegate_general/bits_per_byte"}

            mlflow = stack["mlflow"]
            page.goto(f"{mlflow}/#/experiments/{exp.experiment_id}/runs/{a.info.run_id}/artifacts/gate/decision.md")
            page.get_by_text("tunegate_general").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "mlflow-gate-table.png"))

            page.goto(f"{mlflow}/#/experiments/{exp.experiment_id}/runs")
            unchecked = page.get_by_label("Press Space to toggle row selection (unchecked)")
            for _ in range(2):  # select both runs in the list, then Compare
                unchecked.first.click()
            page.get_by_role("button", name="Compare").first.click()
            page.wait_for_url(re.compile(r".*compare-runs.*"))
            page.get_by_text(names[1]).first.wait_for()  # both runs side by side
            page.get_by_text(names[0]).first.wait_for()
            page.get_by_role("button", name="Close").first.click()  # the assistant side panel
            row = page.get_by_text("baseline/tunegate_domain/token_f1").first  # same metric names line up
            row.wait_for(state="attached")
            row.scroll_into_view_if_needed()
            page.mouse.wheel(0, 300)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(SHOTS / "mlflow-compare.png"))
        finally:
            browser.close()
