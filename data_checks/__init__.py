"""Data checks: one concern per module, each a detector plus a Great Expectations suite.

A detector computes boolean result columns over all records at once (no raw text in them), and
the suite asserts those columns with GE expectations. GE never sees the text, so its reports
cannot copy PII. `run_suite` in `data_checks.gx_suite` runs one suite over a frame.
"""


def all_rules() -> dict[str, str]:
    """Every rule of every suite: name -> what it asserts."""
    from data_checks import duplicates, format, leakage, length, pii, preference

    return {**format.RULES, **length.RULES, **duplicates.RULES, **pii.RULES, **leakage.RULES, **preference.RULES}
