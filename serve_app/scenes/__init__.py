"""Scenes: per-scene policies, term and image lists, human reviews (framework-free)."""
