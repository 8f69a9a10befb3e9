"""The ``infrabackup`` command: :mod:`.commands` (what each command does) and
:mod:`.render` (exit codes, text and JSON output); :mod:`.demo` is ``infrabackup demo``."""

from infrabackup.cli.commands import cli, main

__all__ = ["cli", "main"]
