"""``python -m pipeline.cli``: the same as the ``vitrine`` command."""

from pipeline.cli.app import main

main()
