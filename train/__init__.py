"""QLoRA training with correct prompt masking, exporting adapters that vLLM loads as LoRA modules."""
