"""Experiments: assignment, holdouts, exposures, metrics and the statistics engine."""
