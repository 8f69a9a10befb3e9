"""Keep large, short-lived buffers on the heap instead of fresh memory mappings.

Why: every SMB request of a few MiB is copied several times while smbprotocol packs and
signs it, and each copy is a new bytes object. glibc serves such sizes with ``mmap`` and
returns them with ``munmap`` (or trims them off the heap top), so every buffer's pages are
faulted in and zeroed by the kernel again: on a 2-core machine that page-fault work cost
more than the signing itself (py-spy; README "Speed"). Raising the mmap and trim
thresholds lets the allocator reuse the same memory. The cost is that up to
:data:`TRIM_THRESHOLD` of freed memory may stay mapped; peak memory is unchanged.

The same call also freezes the garbage collector's view of what exists at start-up
(``gc.freeze``, after the imports): the data path allocates a few small objects per MiB, which
triggers collections, and each full collection walked every object the SDK imports created
(3-5 % of a backup's CPU in perf). Frozen objects are never collected, which they would not
be anyway: they live as long as the process.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above the 2 MiB SMB requests and their packed copies; low enough that freed memory is
# soon given back (32/64 MiB held a 1 GiB backup at ~170 MB peak RSS, 8/16 at ~120 MB).
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
_done = False


def tune_allocator() -> bool:
    """Apply the thresholds once per process (glibc only); True when they were set."""
    global _done
    if _done:
        return True
    gc.freeze()
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols, libc's among them: ctypes.util.find_library would
        # run ldconfig in a subprocess at every start.
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): keep defaults
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not _done:
        log.debug("mallopt refused the thresholds; keeping the allocator's defaults")
    return _done
