"""``check``: what ``Test-AzureStack -Include AzsBackupShareAccessibility`` does.

Connect, authenticate, write a probe file, read it back, delete it, report the free
capacity. The first failing step raises its error (with the alert and remediation).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from infrabackup.errors import GeneralFault
from infrabackup.layout import StampLayout
from infrabackup.share.base import Capacity, Share, join


@dataclass
class CheckReport:
    share: str
    steps: list[str] = field(default_factory=list)
    capacity: Capacity | None = None


def check_share(share: Share, layout: StampLayout | None) -> CheckReport:
    """Probe the share (under the stamp's region folder when one is configured)."""
    report = CheckReport(share.description)
    folder = layout.region_root if layout else ""
    share.list_dir("")
    report.steps.append("connected and authenticated")
    if folder:
        share.make_dirs(folder)
    probe = join(folder, f".infrabackup-probe-{uuid.uuid4().hex[:12]}")
    payload = os.urandom(4096)
    try:
        share.write_stream(probe, [payload])
        report.steps.append("wrote a probe file")
        if b"".join(share.read_stream(probe)) != payload:
            raise GeneralFault(f"The probe file read back from {share.description} differs.")
        report.steps.append("read it back")
    finally:
        share.remove(probe)
    report.steps.append("removed it")
    report.capacity = share.capacity()
    return report
