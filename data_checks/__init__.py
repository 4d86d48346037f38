"""Data checks: one concern per module, each a detector plus a Great Expectations suite.

A detector computes boolean result columns over all records at once (no raw text in them), and
the suite asserts those columns with GE expectations. GE never sees the text, so its reports
cannot copy PII. `run_suite` in `data_checks.gx_suite` runs one suite over a frame.
"""
