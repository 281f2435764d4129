"""``python -m sockcat``: the command line."""

from sockcat.cli import main

main()
