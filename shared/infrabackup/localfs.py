"""Local file system helpers that work however deep the tree."""

from __future__ import annotations

import errno
import os
import stat


def remove_tree(path: str | os.PathLike[str], ignore_errors: bool = False) -> None:
    """Remove the folder ``path`` and everything in it, never following a link.

    ``shutil.rmtree`` without its recursion (Python 3.11's recurses once per level, so
    a tree deeper than the recursion limit raises RecursionError). Raises the first
    OSError, or with ``ignore_errors`` removes what it can and returns.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", os.fspath(path))
    except OSError:
        if ignore_errors:
            return
        raise
    stack = [os.fspath(path)]
    failed: set[str] = set()
    while stack:
        top = stack[-1]
        try:
            folders = []
            with os.scandir(top) as it:
                for item in it:
                    if item.is_dir(follow_symlinks=False):
                        if item.path not in failed:
                            folders.append(item.path)
                    else:
                        os.unlink(item.path)
            if folders:
                stack.extend(folders)
                continue
            os.rmdir(top)
        except OSError:
            if not ignore_errors:
                raise
            failed.add(top)
        stack.pop()
