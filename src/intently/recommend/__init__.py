"""Recommenders learned online from the event stream (no batch retraining)."""
