"""Pipeline stages, one per file, each a Prefect task: ingest, validate, prepare, sft, evaluate,
register, gate, promote."""
