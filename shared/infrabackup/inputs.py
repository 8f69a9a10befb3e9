"""Reading input from outside the process — settings, request bodies and query strings,
queue messages — with bounds, so that no value can make the parser itself fail.

The standard parsers are too permissive or too fragile for input nobody controls:

* ``json.loads`` recurses once per nesting level and raises RecursionError (not a
  ValueError) on ``"[" * 3000``; it also accepts ``NaN``, ``Infinity`` and integers of
  any length. :func:`load_json` bounds the size and the depth first, and refuses those.
* ``int()`` accepts any Unicode digit (``"٧"``), underscores (``"1_0"``), and raises
  ValueError past 4,300 digits; ``str.isdigit`` accepts superscripts (``"²"``), which
  ``int()`` then refuses. :func:`ascii_int` and :func:`ascii_decimal` accept only ASCII
  digits, and a bounded number of them.
* A path with a NUL byte makes ``open()`` raise ValueError; one too long for the file
  system fails with ENAMETOOLONG only when something is finally written.
  :func:`path_problem` finds both before the path is used.

Every function here is pure (no I/O), so validation can run before anything is written.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Longest path accepted in a setting (share root, source, certificate file). Linux
#: allows 4,096 bytes; the share layout adds up to ~450 characters below the root.
MAX_PATH_CHARS = 1024
#: Longest single file or folder name: NTFS, ext4 and SMB all stop at 255.
MAX_NAME_BYTES = 255
#: Nesting deeper than any JSON the service reads (settings: 3; bodies, messages: 1).
DEFAULT_MAX_DEPTH = 32
#: Digits in a number: well past any count or size the service handles.
MAX_DIGITS = 18

_INT_RE = re.compile(rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}", re.ASCII)
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})", re.ASCII)
# A JSON string (escapes included, possibly unterminated) or one bracket: what the depth
# scan needs to see. Brackets inside strings are skipped with their string.
_JSON_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_SEPARATORS_RE = re.compile(r"[\\/]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class JsonInputError(ValueError):
    """Outside JSON that is too large, too deep, not UTF-8 or not JSON; the message says
    which (never quoting the input)."""


def load_json(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH
              ) -> Any:
    """Parse outside JSON; JsonInputError saying what is wrong.

    Refused before parsing: more than ``max_bytes`` (UTF-8), nesting deeper than
    ``max_depth``, bytes that are not UTF-8. Refused while parsing: ``NaN``,
    ``Infinity``, numbers that overflow a float, integers of more than
    :data:`MAX_DIGITS` digits.
    """
    if isinstance(data, bytes):
        if len(data) > max_bytes:
            raise JsonInputError(f"it has {len(data)} bytes; at most {max_bytes} are accepted")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"it is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
        # A character is at most 4 UTF-8 bytes: only a long text needs the exact count.
        if len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise JsonInputError(f"it has more than {max_bytes} bytes")
    if _too_deep(text, max_depth):
        raise JsonInputError(f"it is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int,
                          parse_float=_finite_float)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"it is not valid JSON ({exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: the depth scan is the guard
        raise JsonInputError(f"it is not valid JSON ({exc.__class__.__name__})") from None


def _too_deep(text: str, limit: int) -> bool:
    depth = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"it holds {name}, which is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise JsonInputError(f"it holds an integer of {len(text)} digits; at most "
                             f"{MAX_DIGITS} are accepted")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonInputError(f"it holds the number {quote(text, 40)}, which is too large")
    return value


def ascii_int(text: str) -> int | None:
    """The whole number ``text`` spells in ASCII digits (an optional sign, at most
    :data:`MAX_DIGITS` digits, nothing around it), else None."""
    return int(text) if _INT_RE.fullmatch(text) else None


def ascii_decimal(text: str) -> float | None:
    """The decimal number ``text`` spells in ASCII (``60``, ``2.5``, ``.5``; no exponent,
    no ``nan``/``inf``, no underscores), else None."""
    return float(text) if _DECIMAL_RE.fullmatch(text) else None


def path_problem(path: str, *, max_chars: int = MAX_PATH_CHARS) -> str | None:
    """Why ``path`` cannot be used as a file or folder path, or None.

    Refused: a NUL or other control character (no file system the service writes to
    stores them, and ``open()`` fails on NUL), more than ``max_chars`` characters, a
    single name longer than :data:`MAX_NAME_BYTES` bytes, text that is not valid
    Unicode (a lone surrogate that is not an undecodable byte of the environment).
    """
    bad = _CONTROL_RE.search(path)
    if bad is not None:
        char = bad.group()
        what = "a NUL byte" if char == "\0" else f"the control character U+{ord(char):04X}"
        return f"it contains {what}"
    if len(path) > max_chars:
        return f"it has {len(path)} characters; at most {max_chars} are accepted"
    for name in _SEPARATORS_RE.split(path):
        try:
            size = len(name.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return "it is not valid Unicode text"
        if size > MAX_NAME_BYTES:
            return (f"the name {quote(name, 40)} in it has {size} bytes; a file or folder "
                    f"name has at most {MAX_NAME_BYTES}")
    return None


def quote(value: object, limit: int = 80) -> str:
    """``value`` for an error message: in single quotes, control characters escaped, cut
    to ``limit`` characters with the full length noted (an operator's message stays one
    readable line whatever the input held)."""
    text = str(value)
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace")
                    .decode("ascii") for c in text[:limit])
    more = f"… ({len(text)} characters)" if len(text) > limit else ""
    return f"'{shown}'{more}"
