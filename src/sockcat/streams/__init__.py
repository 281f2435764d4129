"""sockcat.streams."""
