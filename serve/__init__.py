"""Serving the champion over an OpenAI-compatible API (see serve/server.py); above tunegate/, below cli/."""
