"""Serving the base model and adapters with vLLM (`vllm serve --enable-lora`), and measuring it."""
