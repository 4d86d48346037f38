"""Prefect flows: orchestration only. Each flow body is a short list of task calls."""
