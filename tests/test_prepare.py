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
