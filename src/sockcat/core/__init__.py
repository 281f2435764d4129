"""sockcat.core."""
