"""sockcat.engines."""
