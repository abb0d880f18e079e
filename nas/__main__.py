"""``python -m nas``: the ``nas`` command line."""

from nas.cli import main

main()
