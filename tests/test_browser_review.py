"""A person decides a needs_review candidate in a real browser, and reads the answers side by side in MLflow.

    pytest -m slow tests/test_browser_review.py    # ~3-4 min on 2 cores; screenshots -> docs/screenshots/

`tunegate ui` and `tunegate serve` run as real processes (tests/live_stack.py). The finetune deployment
runs the tiny config with only supporting-tier rules and a review interval no eval can meet, so its gate
says needs_review and the flow run pauses with the review form (gate.review_timeout_s). Debian's
chromium opens the form in the Prefect UI, approves with a reason and submits; the run resumes and the
version is promoted with the reviewer's tags. Then the MLflow UI shows the run's eval/side_by_side.json.
"""

from __future__ import annotations

import os

import pytest

from live_stack import api, running_stack, wait_for
from test_browser_e2e import ARGS, CHROMIUM, SHOTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"),
]

# Supporting rules never block, and no interval is narrower than 1e-6: the gate can only ask for review.
NEEDS_REVIEW = [
    "--set", "gate.rules=[{task: tunegate_general, metric: bits_per_byte, higher_is_better: false, max_drop: 0.1, "
             "tier: supporting}, {task: tunegate_domain, metric: token_f1, max_drop: 0.05, tier: supporting}]",
    "--set", "gate.review_ci_width=0.000001", "--set", "gate.review_timeout_s=900", "--set", "sft.max_steps=8",
    "--set", "dpo.max_steps=1",
]


@pytest.fixture()
def stack(tmp_path, tiny_model):
    args = ["--paused", "--feedback-logs", f"{tmp_path}/no-feedback/*.jsonl", *NEEDS_REVIEW]
    with running_stack(tmp_path, args) as running:
        yield running


def flow_run_state(stack, run_id: str) -> dict:
    return api(stack["prefect"], f"/api/flow_runs/{run_id}")


def test_a_reviewer_approves_in_the_prefect_form_and_reads_the_side_by_side_in_mlflow(stack):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    dep = stack["deployments"]["finetune"]
    run_id = api(stack["prefect"], f"/api/deployments/{dep['id']}/create_flow_run",
                 {"name": "review-in-browser", "parameters": dep["parameters"]})["id"]
    paused = wait_for(lambda: (lambda r: r if r["state_type"] in ("PAUSED", "COMPLETED", "FAILED", "CRASHED")
                               else None)(flow_run_state(stack, run_id)), 900, "the flow run to pause for review")
    assert paused["state_type"] == "PAUSED", paused["state"]["message"]

    client = MlflowClient(stack["tracking_uri"])
    exp = client.get_experiment_by_name("tunegate")
    (run,) = client.search_runs([exp.experiment_id])
    version = client.search_model_versions(f"run_id = '{run.info.run_id}'")[0]
    assert version.tags["gate"] == "needs_review"
    side_by_side = f"{stack['mlflow']}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/eval/side_by_side.json"

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        try:
            page.goto(f"{stack['prefect']}/runs/flow-run/{run_id}", wait_until="networkidle")
            page.get_by_role("button", name="Resume").first.click()
            modal = page.get_by_role("dialog")
            modal.get_by_text("Gate: NEEDS REVIEW").wait_for()
            # The form shows the gate table and links to the answers side by side in the MLflow UI.
            assert modal.get_by_role("link", name="eval/side_by_side.json").get_attribute("href") == side_by_side
            modal.get_by_text("tunegate_general", exact=True).first.wait_for()
            fill_review_form(modal, "ana", "answers read side by side; general drift is noise")
            # The form's text scrolls on its own: show the links and the gate table above the filled fields.
            modal.get_by_text("Answers side by side:").evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / "prefect-review-form.png"))
            modal.get_by_role("button", name="Submit").click()

            done = wait_for(lambda: (lambda r: r if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") else None)(
                flow_run_state(stack, run_id)), 600, "the flow run to finish after the review")
            assert done["state_type"] == "COMPLETED", done["state"]["message"]
            tags = client.get_model_version("tunegate-model", version.version).tags
            assert (tags["review.decision"], tags["review.user"], tags["promotion"]) == ("approved", "ana", "review")
            assert tags["review.reason"] == "answers read side by side; general drift is noise"
            assert client.get_model_version_by_alias("tunegate-model", "champion").version == version.version

            page.set_viewport_size({"width": 2200, "height": 1000})  # room for the answer columns
            page.goto(side_by_side)
            page.get_by_text("agreement", exact=True).first.wait_for(timeout=60_000)  # the table view's header
            page.get_by_role("button", name="Close").first.click()  # the assistant side panel
            page.get_by_text("candidate", exact=True).first.wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(SHOTS / "mlflow-side-by-side.png"))
        except Exception:  # what the browser saw, next to the servers' logs
            page.screenshot(path=str(stack["tmp"] / "failure.png"))
            (stack["tmp"] / "failure.html").write_text(page.content())
            raise
        finally:
            browser.close()


def fill_review_form(modal, reviewer: str, reason: str) -> None:
    """approve: on; reviewer and reason typed into the form Prefect draws from ReviewDecision."""
    modal.get_by_role("switch").first.click()
    for help_text, text in (("Who decides; recorded on the model version.", reviewer),
                            ("Why; recorded on the model version.", reason)):  # ReviewDecision's field descriptions
        modal.get_by_text(help_text).locator("xpath=following::textarea[1]").fill(text)
