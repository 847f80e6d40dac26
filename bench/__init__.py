"""Benchmarks, one home: offline engines (`evaluate bench`), serving (`serve bench`, `serve crosscheck`), the
CPU LoRA ops, training logits and report speed. They may import the stages; no stage imports them.
"""
