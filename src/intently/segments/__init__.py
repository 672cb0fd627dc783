"""Segments: live membership from a small, safe expression language."""
