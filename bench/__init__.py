"""Benchmarks, one home: offline engines (`evaluate bench`), serving (`patent-risk serve bench`, `patent-risk serve crosscheck`), the
CPU LoRA ops, training logits and report speed. They may import the stages; no stage imports them.
"""
