"""Running models, shared by train/, evaluate/ and serve/: the artifact home, the embedded model's provisioning,
CPU settings, vLLM plugins (CPU LoRA ops, the outlines cache), the vLLM offline and server engines, generation
requests, engine logs, adapter checks and process measurement. Imports only schemas/.
"""
