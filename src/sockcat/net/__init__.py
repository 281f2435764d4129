"""sockcat.net."""
