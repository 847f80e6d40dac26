"""The project's contracts: dataset records, model output schemas, prompts and artifacts.

Every other package builds on these; nothing here imports an engine.
"""
