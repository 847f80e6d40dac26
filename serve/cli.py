"""`serve`: the vLLM OpenAI-compatible server with LoRA modules (start/stop/status and benchmarks)."""
from __future__ import annotations

import click


@click.group()
def main() -> None:
    """Serve a base model with LoRA adapters through vLLM's OpenAI-compatible server."""


if __name__ == "__main__":
    main()
