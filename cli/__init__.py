"""The thin click commands on top (`train`, `evaluate`, `serve`, `make demo`, `make recipe`, the demo data
generator): they parse options, call the stages' libraries and the benchmarks, and print. No library code
imports them.
"""
