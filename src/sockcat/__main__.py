"""``python -m sockcat``: the command line."""

from .cli import main

main()
