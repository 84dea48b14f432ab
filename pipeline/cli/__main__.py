"""``python -m pipeline.cli``: the ``embedstream`` command."""

from pipeline.cli import main

main()
