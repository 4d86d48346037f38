"""Build the demo datasets in data/demo/ from the LLaMA-Factory demo files in data/llamafactory/.

    python data/build_demo_data.py

- identity.json: identity.json with {{name}} and {{author}} filled in (the domain data).
- alpaca_general.json: short Alpaca rows mixed into training against forgetting.
- general_holdout.json: other short Alpaca rows, never trained on, for the regression eval.
- dpo_short.json: the dpo_en_demo.json pairs of at most 1,200 characters (prompt + longer answer),
  so the demo's DPO step fits its max_length and its time budget on a CPU.
- identity_preferences.json: each identity answer (chosen) against the same answer claiming the base
  model's own identity, "SmolLM" by "Hugging Face" (rejected): what the product's users prefer, for
  the reward model (configs/rlhf.yaml, the demo's preference store).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME, AUTHOR = "Gatekeeper", "the tunegate team"
BASE_NAME, BASE_AUTHOR = "SmolLM", "Hugging Face"


def identity_preference(row: dict) -> dict:
    """The identity answer against the same answer with the base model's identity, as a sharegpt preference."""
    def fill(name: str, author: str) -> str:
        return row["output"].replace("{{name}}", name).replace("{{author}}", author)

    prompt = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
    return {"conversations": [{"from": "human", "value": prompt}],
            "chosen": {"from": "gpt", "value": fill(NAME, AUTHOR)},
            "rejected": {"from": "gpt", "value": fill(BASE_NAME, BASE_AUTHOR)}}


def main() -> None:
    src = HERE / "llamafactory"
    out = HERE / "demo"
    out.mkdir(exist_ok=True)
    identity = json.loads((src / "identity.json").read_text())
    preferences = [identity_preference(row) for row in identity if "{{name}}" in row["output"]]
    for row in identity:
        row["output"] = row["output"].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)
    alpaca = json.loads((src / "alpaca_en_demo.json").read_text())
    # Short rows keep CPU training fast; file order is the split, so it is reproducible.
    short = [r for r in alpaca if not r["input"] and len(r["instruction"]) + len(r["output"]) <= 260]
    general, holdout = short[:48], short[48:108]
    pairs = json.loads((src / "dpo_en_demo.json").read_text())
    size = lambda r: sum(len(t["value"]) for t in r["conversations"]) + max(len(r["chosen"]["value"]),  # noqa: E731
                                                                          len(r["rejected"]["value"]))
    short_pairs = [r for r in pairs if size(r) <= 1200]
    for name, rows in [("identity.json", identity), ("alpaca_general.json", general), ("general_holdout.json", holdout),
                       ("dpo_short.json", short_pairs), ("identity_preferences.json", preferences)]:
        (out / name).write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        print(f"{out / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
