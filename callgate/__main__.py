"""``python -m callgate``: the same as the ``callgate`` command."""

from callgate.cli.main import main

main()
