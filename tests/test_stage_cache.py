"""Stages take config sections and typed inputs, and Prefect's cache keys follow exactly those."""

from prefect import flow

from tasks.base_model import base_model
from tasks.ingest import ingest
from tasks.prepare import Prepared, prepare
from tasks.validate import validate
from tunegate.config import PipelineParams, load_config


@flow
def data_stages(params: PipelineParams) -> dict:
    """The data half of finetune_pipeline, with each stage's final state name."""
    run = params.paths()
    model = base_model(params.model)
    ingested = ingest(params.data, run.data, return_state=True)
    validated = validate(ingested.result(), params.data, model, run.data, return_state=True)
    prepared = prepare(validated.result(), params.data, model, run.data, return_state=True)
    return {"states": [s.name for s in (ingested, validated, prepared)], "prepared": prepared.result()}


def test_an_unrelated_field_reuses_the_stage_and_a_field_it_reads_reruns_it(tmp_path, prefect_harness, tiny_model):
    params = load_config("configs/tiny.yaml").model_copy(update={"output_dir": str(tmp_path)})
    first = data_stages(params.model_copy(update={"run_name": "first"}))
    assert first["states"] == ["Completed", "Completed", "Completed"]
    prepared = first["prepared"]
    assert isinstance(prepared, Prepared) and prepared.base.name == "tiny"
    assert prepared.validated.rows_kept == prepared.counts["train"] + prepared.counts["domain_eval"]

    # Training and eval fields are not read by the data stages: every one is a cache hit, and no
    # files are written for the new run.
    other_training = params.model_copy(update={
        "run_name": "second", "sft": params.sft.model_copy(update={"learning_rate": 1e-4, "max_steps": 3}),
        "eval": params.eval.model_copy(update={"max_gen_toks": 8})})
    second = data_stages(other_training)
    assert second["states"] == ["Cached", "Cached", "Cached"]
    assert second["prepared"] == prepared and not (tmp_path / "second" / "data").exists()

    # The eval fraction is read by validate (it decides the split): validate and prepare run again,
    # and the split they write is a different one.
    other_split = params.model_copy(update={"run_name": "third",
                                            "data": params.data.model_copy(update={"eval_fraction": 0.3})})
    third = data_stages(other_split)
    assert third["states"] == ["Completed", "Completed", "Completed"]
    assert third["prepared"].counts["domain_eval"] > prepared.counts["domain_eval"]
    assert third["prepared"].data_hash != prepared.data_hash

    # max_length is read through the model reference (the length suite): validate re-runs.
    longer = params.model_copy(update={"run_name": "fourth",
                                       "sft": params.sft.model_copy(update={"max_length": 1024})})
    assert data_stages(longer)["states"][1] == "Completed"


def test_the_same_bytes_at_another_path_are_ingested_again_under_that_path(tmp_path, prefect_harness, tiny_model):
    """Rows name their source file, and checks select rows by file (the feedback window): a cache hit across paths
    would hand a new window the rows of an earlier one with the same bytes, outside the window's checks."""
    import json
    import shutil

    params = load_config("configs/tiny.yaml").model_copy(update={"output_dir": str(tmp_path / "out")})
    copy = tmp_path / "copy" / "identity.json"
    copy.parent.mkdir()
    shutil.copy(params.data.domain_files[0], copy)
    first = data_stages(params.model_copy(update={"run_name": "first"}))
    moved = params.model_copy(update={"run_name": "moved",
                                      "data": params.data.model_copy(update={"domain_files": [str(copy)]})})
    second = data_stages(moved)
    assert second["states"][0] == "Completed"
    records = (tmp_path / "out" / "moved" / "data" / "records.jsonl").read_text().splitlines()
    sources = {json.loads(line)["source"]["file"] for line in records}
    assert str(copy) in sources and params.data.domain_files[0] not in sources, sources
    assert first["prepared"].counts == second["prepared"].counts  # same rows, same split
