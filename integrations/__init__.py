"""Integrations of the core with Hugging Face training loops, TRL, multi-process training
and the benchmarks; installed as ``paretoopt.integrations`` (never imported by the core)."""
