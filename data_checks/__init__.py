"""Data checks: one concern per module, each a detector plus a Great Expectations suite.

    format.py  length.py  duplicates.py  pii.py  leakage.py  preference.py  contradiction.py  raters.py
    (text.py: the shared text view; facts.py: key facts of answers; split.py: the train/eval split;
    pii_context.py: what the words right before a PII-shaped number say it is)

A detector computes boolean result columns over all records at once (no raw text in them), and
the suite asserts those columns with GE expectations. GE never sees the text, so its reports
cannot copy PII. `GxRun` in `data_checks.gx_suite` runs the suites of one validation in one GE
context and renders their Data Docs; tasks/validate.py wires them together.
"""


def all_rules() -> dict[str, str]:
    """Every rule of every suite: name -> what it asserts."""
    from data_checks import contradiction, duplicates, format, leakage, length, pii, preference, raters

    return {**format.RULES, **length.RULES, **duplicates.RULES, **pii.RULES, **leakage.RULES, **preference.RULES,
            **contradiction.RULES, **raters.RULES}


def check_rule_names(max_fraction: dict[str, float]) -> None:
    """Fail on a threshold for a rule no suite has (a typo would otherwise never apply)."""
    known = all_rules()
    unknown = sorted(set(max_fraction) - set(known))
    if unknown:
        raise ValueError(f"data.checks.max_fraction names unknown rules {unknown}; known: {sorted(known)}")
