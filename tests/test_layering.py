"""The layering of docs/ARCHITECTURE.md, enforced: what may import what.

Every ``import`` of an ``infrabackup`` module counts, at the top of a file or inside a
function (a local import hides a dependency, it does not remove it), and under
``TYPE_CHECKING`` too. A rule names a room (a folder such as ``stream/`` or a top-level
module such as ``backup``) and the rooms it must not import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shared" / "infrabackup"

#: The layers, bottom to top, as docs/ARCHITECTURE.md draws them.
ENGINE = ("swap_journal", "backup", "restore", "restore_sources", "retention")
TOP = ("jobs/", "services", "app/", "cli/")

#: room -> the rooms it must not import.
RULES: dict[str, tuple[str, ...]] = {
    # The building blocks know nothing of what runs them.
    "stream/": ("share/", "keys/", "catalog", "manifest", *ENGINE, *TOP),
    "share/": ("sources/", "stream/", "keys/", "catalog", "manifest", *ENGINE, *TOP),
    "sources/": ("stream/", "keys/", "catalog", "manifest", *ENGINE, *TOP),
    "keys/": ("share/", "sources/", "catalog", "manifest", *ENGINE, *TOP),
    "layout": ("sources/", "stream/", "keys/", *ENGINE, *TOP),
    "manifest": ("sources/", "catalog", *ENGINE, *TOP),
    "catalog": (*ENGINE, *TOP),
    "progress": ("share/", "sources/", "stream/", *ENGINE, *TOP),
    "telemetry": (*ENGINE, *TOP),
    "staging": ("share/", "sources/", "stream/", *ENGINE, *TOP),
    "staleness": TOP,
    "settings": ("share/", "sources/", "stream/", "keys/", "app/", "cli/", "services",
                 *ENGINE),
    # The engine: one backup, one restore, retention; never the job machinery above.
    **{room: TOP for room in ENGINE},
    "jobs/": ("services", "app/", "cli/"),
    "services": ("app/", "cli/"),
    "app/": ("cli/",),
    "cli/": ("app/",),
}

#: Imports the rules would refuse, each with its reason (keep this list short).
ALLOWED = {
    # The app's storage account is a setting (AzureWebJobsStorage): settings resolves it
    # with the parser that lives beside the storage clients (no SDK is imported by it).
    ("settings", "jobs/storage"),
    # The one re-chunker lives with the stream's stages; the SMB pipe cuts its writes
    # with it (it imports nothing but the standard library).
    ("share/", "stream/chunks"),
}

FOUNDATION = ("errors", "alerts", "inputs", "names", "ncrontab", "versions", "localfs")


def _room(module: str) -> str:
    parts = module.split(".")[1:]  # without "infrabackup"
    if not parts:
        return "__init__"
    if (PACKAGE / parts[0]).is_dir():
        return f"{parts[0]}/"
    return parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Every infrabackup module ``path`` imports (absolute or relative)."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append(target)
            # ``from infrabackup import x`` / ``from . import x``: x may be a module.
            found += [f"{target}.{a.name}" for a in node.names
                      if (PACKAGE.parent / target.replace(".", "/") / f"{a.name}.py").exists()]
    return [m for m in found if m == "infrabackup" or m.startswith("infrabackup.")]


def _edges() -> list[tuple[str, str, str]]:
    """(file, importing room, imported module) for every import across rooms."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source_room = _room(_module_of(path))
        for target in _imports(path):
            if _room(target) != source_room:
                edges.append((str(path.relative_to(PACKAGE)), source_room, target))
    return edges


def _allowed(room: str, target: str) -> bool:
    sub = "/".join(target.split(".")[1:3])
    return (room, sub) in ALLOWED


def test_the_rules_name_real_rooms() -> None:
    rooms = {_room(_module_of(p)) for p in PACKAGE.rglob("*.py")}
    named = set(RULES) | {r for banned in RULES.values() for r in banned} | set(FOUNDATION)
    assert named - rooms == set(), "a rule names a room that does not exist"


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_imports_only_what_the_layering_allows(room: str) -> None:
    wrong = [f"{file} imports {target}" for file, source, target in _edges()
             if source == room and _room(target) in RULES[room] and not _allowed(room, target)]
    assert wrong == [], f"{room} breaks the layering of docs/ARCHITECTURE.md"


def test_the_foundation_imports_nothing_above_it() -> None:
    """errors, inputs, names, ncrontab, versions, localfs: what every room may use."""
    wrong = [f"{file} imports {target}" for file, source, target in _edges()
             if source in FOUNDATION and _room(target) not in FOUNDATION]
    assert wrong == []


def test_the_package_is_imported_by_one_name_only() -> None:
    """One module identity: never ``shared.infrabackup.x`` beside ``infrabackup.x``."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.relative_to(PACKAGE)}: {n}" for n in names
                      if n == "shared" or n.startswith("shared.")]
    assert wrong == []


def _outside_smb() -> list[Path]:
    smb = PACKAGE / "share" / "smb"
    return [p for p in sorted(PACKAGE.rglob("*.py")) if smb not in p.parents]


def test_smbprotocol_is_used_only_by_the_smb_share() -> None:
    """Every smbprotocol call goes through share/smb/ (its privates through _compat.py):
    the SMB source reads and writes with SmbShare's public verbs."""
    wrong = []
    for path in _outside_smb():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.relative_to(PACKAGE)}: {n}" for n in names
                      if n.split(".")[0] in ("smbprotocol", "smbclient")]
    assert wrong == []


def test_no_room_reaches_into_a_share_s_private_members() -> None:
    """``share._x`` outside share/smb/ would tie a caller to SmbShare's insides."""
    wrong = []
    for path in _outside_smb():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            owner = node.value
            name = (owner.attr if isinstance(owner, ast.Attribute)
                    else owner.id if isinstance(owner, ast.Name) else "")
            if name in ("share", "_share"):
                wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}.{node.attr}")
    assert wrong == []
