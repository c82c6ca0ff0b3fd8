"""Which paths of a files target go into the archive: the walk, include/exclude globs, the member list for tar.

Why we walk the tree ourselves and hand tar a NUL-separated member list with
``--no-recursion``: include/exclude globs then mean one thing in one place (this
module), empty directories are kept, symlinks are never followed, special files are
skipped with a warning (the restore filter would refuse them anyway), and overlapping
roots are archived once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import chain
from operator import attrgetter
from pathlib import Path

from backup_tasks.errors import SourceError
from backup_tasks.sources.files.tree_listing import tree_key


def _matches(patterns: tuple[str, ...], rel: str, is_dir: bool) -> bool:
    """Glob match against the path relative to its root and against the basename.

    A pattern ending in '/' names directories only ("node_modules/" anywhere in the tree).
    """
    base = rel.rpartition("/")[2]
    for pattern in patterns:
        if pattern.endswith("/"):
            if is_dir and (fnmatchcase(base, pattern[:-1]) or fnmatchcase(rel, pattern[:-1])):
                return True
        elif fnmatchcase(base, pattern) or fnmatchcase(rel, pattern):
            return True
    return False


_NAME = attrgetter("name")


def _children(directory: str, warnings: list[str]) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=_NAME)  # sorted: same tree, same archive
    except FileNotFoundError:
        warnings.append(f"{directory}: directory vanished during the walk")
        return []
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc.strerror}",
                          "let the worker's user read it, or exclude it from the target") from None


def _walk(root: str, include: tuple[str, ...], exclude: tuple[str, ...], warnings: list[str]
          ) -> Iterator[tuple[str, bool, bool]]:
    """Yield (path, is_dir, picked) below ``root`` depth-first, a directory before its contents.

    ``picked``: matched by ``include`` or inside a directory that was. Symlinks are
    yielded as entries and never followed; excluded directories are not entered.
    """
    cut = len(root.rstrip("/")) + 1
    stack = [(iter(_children(root, warnings)), not include)]
    while stack:
        entry = next(stack[-1][0], None)
        if entry is None:
            stack.pop()
            continue
        inherited = stack[-1][1]
        rel = entry.path[cut:]
        is_dir = entry.is_dir(follow_symlinks=False)
        if not (is_dir or entry.is_file(follow_symlinks=False) or entry.is_symlink()):
            warnings.append(f"{entry.path}: skipped, not a regular file, directory or symlink")
            continue
        if exclude and _matches(exclude, rel, is_dir):
            continue
        picked = inherited or _matches(include, rel, is_dir)
        yield entry.path, is_dir, picked
        if is_dir:
            stack.append((iter(_children(entry.path, warnings)), picked))


def _runs(root: str, exclude: tuple[str, ...], warnings: list[str], first: list[os.DirEntry] | None = None
          ) -> Iterator[list[str]]:
    """What _walk yields without include patterns, as lists of paths: each list ends at a directory.

    The walk without include patterns is the usual one, and a generator step per path
    was a fifth of an incremental's first pass: here Python runs a short loop per entry
    and a generator step per directory, and the consumer reads the lists through
    ``chain.from_iterable`` (C).
    ``first``: the entries to start from instead of the root's (some of the entries of a
    directory at or below the root: one half of a split walk).
    """
    cut = len(root.rstrip("/")) + 1
    stack = [iter(_children(root, warnings) if first is None else first)]
    run: list[str] = []
    while stack:
        for entry in stack[-1]:
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                if not (exclude and _matches(exclude, entry.path[cut:], False)):
                    run.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                if exclude and _matches(exclude, entry.path[cut:], True):
                    continue
                run.append(entry.path)
                yield run
                run = []
                stack.append(iter(_children(entry.path, warnings)))
                break
            else:
                warnings.append(f"{entry.path}: skipped, not a regular file, directory or symlink")
        else:
            stack.pop()
    if run:
        yield run


@dataclass(frozen=True)
class SecondHalf:
    """The second half of a one-root walk: ``directory``'s entries named ``start`` or later, and all below them.

    In tree order it follows the first half exactly (nothing after it: one root, and
    ``directory`` is the root or its only subdirectory, or that one's, ...), so the two
    halves can be walked and joined by two processes and their outputs put end to end.
    """

    root: str
    directory: str
    start: str
    exclude: tuple[str, ...]

    def key(self) -> str:
        """The tree key where this half starts: every path of the first half sorts before it."""
        return tree_key(os.path.join(self.directory, self.start).lstrip("/"))

    def paths(self, warnings: list[str]) -> Iterator[str]:
        first = [e for e in _children(self.directory, warnings) if e.name >= self.start]
        return chain.from_iterable(_runs(self.root, self.exclude, first=first, warnings=warnings))


def split_members(target, warnings: list[str]) -> tuple[Iterator[str], SecondHalf] | None:
    """The walk of ``target`` cut in two (the first half's paths, the second half), or None when it cannot be.

    Why: the walk, lstat and join of a large tree are one Python thread's work; two
    halves use two cores. Only the usual target is cut (one directory root, no include
    patterns): a gathered walk needs all its paths first. The cut is at the first level
    with more than one entry, 5/9 of them before it: the second half's process starts
    later (an interpreter, and reading past the first half's part of the parent listing),
    which was about a tenth of a half's time on a 100k-file tree. Balanced when the
    subtrees are alike, and never wrong when they are not, only less even.
    """
    if target.include or len(target.paths) != 1:
        return None
    root = _checked_root(target.paths[0], target.name)
    if os.path.islink(root) or not os.path.isdir(root):
        return None
    exclude, cut = tuple(target.exclude), len(root.rstrip("/")) + 1
    lead, directory = [root], root
    entries = _children(directory, warnings)
    while len(entries) == 1 and entries[0].is_dir(follow_symlinks=False) and not (
            exclude and _matches(exclude, entries[0].path[cut:], True)):
        directory = entries[0].path
        lead.append(directory)
        entries = _children(directory, warnings)
    if len(entries) < 2:
        return None
    mid = len(entries) * 5 // 9
    first = chain(lead, chain.from_iterable(_runs(root, exclude, warnings, first=entries[:mid])))
    return first, SecondHalf(root, directory, entries[mid].name, exclude)


def _keep_picked(members: list[tuple[str, bool, bool]], roots: set[str]) -> list[str]:
    """With include patterns, keep picked entries and the directories leading to them."""
    needed = set(roots)
    for path, _, picked in members:
        if picked:
            parent = path
            while parent not in needed:
                needed.add(parent)
                parent = os.path.dirname(parent)
    return [path for path, _, _ in members if path in needed]


def select_members(target, warnings: list[str] | None = None) -> tuple[Iterable[str], list[str]]:
    """The absolute paths to archive for ``target`` and the warnings the walk raised (appended to ``warnings``).

    A root itself is always archived (naming it in ``paths`` is an explicit choice);
    include/exclude apply below directory roots. The warnings list fills as the paths
    are read. Without include patterns and with roots that do not overlap (the usual
    target) the paths come as the walk finds them, so a tree of a million files is never
    held in memory; otherwise they are gathered first, to keep the directories leading
    to included paths and to archive each path once.
    """
    warnings = [] if warnings is None else warnings
    roots = [_checked_root(p, target.name) for p in target.paths]
    if not target.include and not _overlapping(roots):
        # roots in tree order, so the stream is in the listing's order (a directory's walk already is)
        ordered = sorted(roots, key=lambda root: tree_key(root.lstrip("/") or "."))
        return _members(ordered, target, warnings), warnings
    members = list(_members_with_picks(roots, target, warnings))
    paths = _keep_picked(members, set(roots)) if target.include else [m[0] for m in members]
    return list(dict.fromkeys(paths)), warnings  # overlapping roots: archive each path once


def _overlapping(roots: list[str]) -> bool:
    return len(set(roots)) < len(roots) or any(
        other != root and other.startswith(root.rstrip("/") + "/") for root in roots for other in roots)


def _members(roots: list[str], target, warnings: list[str]) -> Iterator[str]:
    return chain.from_iterable(_roots_runs(roots, tuple(target.exclude), warnings))


def _archived_roots(roots: list[str], warnings: list[str]) -> Iterator[tuple[str, bool]]:
    """Each root that is archived, and whether the walk goes below it (a directory, not a symlink to one)."""
    for root in roots:
        if os.path.islink(root):
            warnings.append(f"{root}: is a symlink; the link is archived, not what it points to")
            yield root, False
        elif os.path.isdir(root) or os.path.isfile(root):
            yield root, os.path.isdir(root)
        else:
            warnings.append(f"{root}: skipped, not a regular file, directory or symlink")


def _roots_runs(roots: list[str], exclude: tuple[str, ...], warnings: list[str]) -> Iterator[list[str]]:
    """_members_with_picks without include patterns, in lists of paths (_runs)."""
    for root, below in _archived_roots(roots, warnings):
        yield [root]
        if below:
            yield from _runs(root, exclude, warnings)


def _members_with_picks(roots: list[str], target, warnings: list[str]) -> Iterator[tuple[str, bool, bool]]:
    for root, below in _archived_roots(roots, warnings):
        yield root, os.path.isdir(root), True
        if below:
            yield from _walk(root, tuple(target.include), tuple(target.exclude), warnings)


def _checked_root(path: str, target_name: str) -> str:
    if not os.path.isabs(path):
        raise SourceError(f"target '{target_name}': path {path!r} is not absolute",
                          "use absolute paths in the target's 'paths'")
    path = os.path.normpath(path)
    if not os.path.lexists(path):
        raise SourceError(f"target '{target_name}': path {path} does not exist",
                          "create it, correct it, or remove it from the target's 'paths'")
    return path


def write_member_list(paths: Iterable[str], list_file: Path) -> None:
    with open(list_file, "wb") as f:
        for path in paths:
            # fsencode restores the original bytes of names that are not UTF-8.
            f.write(os.fsencode(path.lstrip("/") or ".") + b"\0")
