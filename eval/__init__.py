"""Measurement: how good recovered prompts are and what the loop costs (benchmarks print figures)."""
