"""The project's contracts: dataset records, model output schemas and their per-record specialization, labels,
prompt rendering, the JSONL reader and the error types that name a file, line and field.

The bottom layer: it imports nothing else of the project (import-linter's contract in pyproject.toml).
"""
