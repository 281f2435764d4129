"""sockcat.serving."""
