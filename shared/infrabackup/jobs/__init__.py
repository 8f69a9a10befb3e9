"""Backup jobs: their records, queue, maintenance window, ownership and storage."""
