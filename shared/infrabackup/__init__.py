"""infrabackup: the Infrastructure Backup Service's logic. ``function_app.py`` and the
``infrabackup`` command only wire inputs to this package."""

__version__ = "0.1.0"
