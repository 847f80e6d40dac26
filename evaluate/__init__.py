"""Batch evaluation through vLLM (constrained and unconstrained) and polars reports."""
