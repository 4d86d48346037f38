"""A sweep started from the Prefect UI form, its plots read in the MLflow UI, in a real browser.

    pytest -m slow tests/test_browser_sweep.py     # ~6 min on 2 cores; screenshots -> docs/screenshots/

`tunegate ui` and `tunegate serve` (tiny config, the sweep section set below) run as real processes on free
loopback ports. Debian's chromium, driven by Playwright, opens the sweep deployment's form, sets the number
of trials, submits; the sweep runs its trials one after another in the served flow run (study in sqlite) and
gates the best. Then the parent run's Optuna plots are opened in the MLflow UI.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from conftest import ROOT
from live_stack import api, running_stack, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "docs" / "screenshots"
TRIALS_HELP = "Trials the study runs to an end (completed, pruned or failed); a resumed study counts the ones it"
# Three values searched, so the importance and parallel-coordinate plots have something to show; the first
# trial is the config's own values, the third barely learns (pruned at its first evaluation).
SWEEP = ["sft.max_steps=8", "sweep.eval_steps=2", "sweep.pruner_startup_trials=2",
         "sweep.space={learning_rate: {low: 1.0e-6, high: 1.0e-2, log: true}, warmup_steps: {low: 1, high: 4}, "
         "lora_r: [4, 8, 16]}",
         "sweep.first_trials=[{learning_rate: 2.0e-3, warmup_steps: 2, lora_r: 8}, {learning_rate: 5.0e-3}, "
         "{learning_rate: 1.0e-6}]"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"),
]


@pytest.fixture()
def stack(tmp_path, tiny_model):
    serve_args = [a for s in SWEEP for a in ("--set", s)] + ["--feedback-logs", f"{tmp_path}/no-feedback/*.jsonl"]
    with running_stack(tmp_path, serve_args) as running:
        yield running


def start_sweep_from_form(page, stack, trials: int) -> str:
    """Open the sweep deployment, set the number of trials in its form, submit; return the flow run's id."""
    dep = stack["deployments"]["sweep"]
    page.goto(f"{stack['prefect']}/deployments/deployment/{dep['id']}", wait_until="networkidle")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    help_text = page.get_by_text(TRIALS_HELP)
    help_text.wait_for()
    box = help_text.locator("xpath=following::input[1]")
    box.fill(str(trials))
    box.scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)  # the sweep section's fields: trials, parallel, objective, space ...
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "prefect-sweep-form.png"))
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r".*tab=Runs"), timeout=30_000)

    def created():
        runs = api(stack["prefect"], "/api/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        return runs[0]["id"] if runs else None

    return wait_for(created, 30, "the sweep's flow run")


def test_a_sweep_from_the_prefect_form_and_its_plots_in_mlflow(stack):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        try:
            run_id = start_sweep_from_form(page, stack, 5)
            done = wait_for(lambda: (lambda r: r if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
                api(stack["prefect"], f"/api/flow_runs/{run_id}")), 1200, "the sweep")
            assert done["state_type"] == "COMPLETED", done["state"]["message"]
            assert done["parameters"]["params"]["sweep"]["trials"] == 5  # what was typed in the form

            client = MlflowClient(stack["tracking_uri"])
            exp = client.get_experiment_by_name("tunegate-sweeps")
            runs = client.search_runs([exp.experiment_id])
            (parent,) = [r for r in runs if r.data.tags["tunegate.kind"] == "sweep"]
            assert len(runs) == 6 and parent.data.tags["sweep.gate"] == "passed"
            table = json.loads(client.download_artifacts(parent.info.run_id, "sweep/trials.json",
                                                         str(stack["tmp"])) and
                               (stack["tmp"] / "trials.json").read_text())
            states = dict(zip(table["columns"], zip(*table["data"])))["state"]
            assert "PRUNED" in states and states.count("COMPLETE") >= 2, states

            mlflow = stack["mlflow"]
            base = f"{mlflow}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/sweep"
            page.goto(f"{base}/parallel_coordinate.png")
            for name in ("parallel_coordinate", "param_importances", "intermediate_values"):
                # a new hash URL does not change the open artifact in MLflow's page: pick it in the tree
                page.get_by_text(f"{name}.png", exact=True).first.click()
                page.get_by_text(f"sweep/{name}.png").first.wait_for(timeout=60_000)
                # MLflow shows an image artifact from a blob: URL, not its path: wait for a drawn plot-sized image
                page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth > 300)",
                                       timeout=60_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(SHOTS / f"mlflow-sweep-{name.replace('_', '-')}.png"))
            page.goto(f"{mlflow}/#/experiments/{exp.experiment_id}/runs")
            page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "mlflow-sweep-runs.png"))
        finally:
            browser.close()
