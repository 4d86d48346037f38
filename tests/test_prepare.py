import json
from pathlib import Path

from tasks.prepare import is_eval_row


def read(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_split_is_deterministic_and_seeded():
    convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}] for i in range(2000)]
    a = [is_eval_row(c, 0, 0.1) for c in convs]
    assert a == [is_eval_row(c, 0, 0.1) for c in convs]
    assert 150 < sum(a) < 250  # about 10%
    assert a != [is_eval_row(c, 1, 0.1) for c in convs]


def test_prepare_writes_prompt_completion_rows_and_templated_eval_prompts(prepared):
    train, evals = read(prepared["train"]), read(prepared["domain_eval"])
    assert prepared["counts"] == {"train": len(train), "domain_eval": len(evals), "general_eval": 60}
    assert len(train) + len(evals) == prepared["report"]["rows_kept"]
    assert all(r["completion"][0]["role"] == "assistant" for r in train)
    # General rows all train; only domain (identity) rows are held out.
    assert all(r["id"].startswith("identity-") for r in read(prepared["eval"]))
    assert all(e["prompt"].endswith("<|im_start|>assistant\n") for e in evals)
    assert len(prepared["data_hash"]) == 64


def test_kto_rows_labelled_false_never_train(tmp_path, tiny_model):
    from conftest import DEMO
    from tasks.prepare import prepare_data

    def row(i, label):
        return {"id": f"k{i}", "messages": [{"role": "user", "content": f"question number {i}"},
                                            {"role": "assistant", "content": f"answer {i}"}],
                "label": label, "source": {"file": "kto.jsonl", "line": i}}

    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(row(i, i % 3 != 0)) + "\n" for i in range(60)))
    out = prepare_data(clean, [], str(DEMO / "general_holdout.json"), tiny_model, tmp_path, 0.2, 0)
    ids = {r["id"] for r in read(out["train"]) + read(out["eval"])}
    assert ids == {f"k{i}" for i in range(60) if i % 3 != 0}  # the 20 undesirable rows are gone, the 40 others kept
