"""``python -m shared`` runs the ``infrabackup`` command."""

from shared.cli import main

main()
