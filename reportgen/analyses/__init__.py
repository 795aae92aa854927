"""Analyses: pure functions on one example (batched from outside by `reportgen.compute`)."""
