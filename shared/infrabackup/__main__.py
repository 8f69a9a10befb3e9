"""``python -m infrabackup`` runs the ``infrabackup`` command."""

from infrabackup.cli import main

main()
