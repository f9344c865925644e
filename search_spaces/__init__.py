"""Bundled search-space files (installed as himari_ray.spaces)."""
