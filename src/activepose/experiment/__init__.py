"""Simulated active-learning experiments: run a grid of strategies x seeds and report on it."""
