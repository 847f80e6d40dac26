"""Serving the base model and adapters with `vllm serve --enable-lora`: start, stop, status and health."""
