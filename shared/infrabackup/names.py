"""Path names that are not valid UTF-8: how they are carried, from a folder to a restore.

A POSIX name is any bytes but ``/`` and NUL. Python decodes it with ``surrogateescape``:
every byte that is not part of valid UTF-8 becomes the lone surrogate U+DC80 + byte
(``b"\\xff"`` is ``"\\udcff"``), and the ``os`` functions encode it back to the same
bytes. A source entry's path is such a ``str``; it is carried as (docs/FORMAT.md):

* **tar** (:mod:`infrabackup.stream.archive`): the original bytes, in a pax ``path`` record preceded
  by ``hdrcharset=BINARY``;
* **JSON** (the manifest's ``changedDuringBackup``/``vanishedDuringBackup``/``skipped``,
  ``--json`` output): a ``\\udcXX`` escape per such byte (:func:`json_text`); Python's
  ``json`` reads it back to the same ``str``;
* **the manifest MAC** (:func:`infrabackup.manifest.canonical_json`): a lone
  surrogate as its three bytes ``ED B2 80`` .. ``ED B3 BF`` (``surrogatepass``); a text
  without one is encoded exactly as before, so every earlier manifest keeps its MAC;
* **messages and logs** (:func:`shown`): ``\\xXX``, printable anywhere.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def json_text(text: str) -> str:
    """JSON text from ``json.dumps(..., ensure_ascii=False)`` with every lone surrogate
    written as a ``\\uXXXX`` escape, so the text encodes as UTF-8 (same JSON value)."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def shown(name: str) -> str:
    """``name`` for a message: undecodable bytes and control characters as ``\\xXX``."""
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system name decodes to
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
