"""A function's directory as the tar a bundle deploy sends (``PUT /v1/functions/NAME``, application/x-tar), made with
:mod:`tarfile` like ``kindling deploy --dir`` makes it with GNU tar: entries sorted, times and owners zeroed (the same
content gives the same bytes, so the server's content hash and unpacked copy are shared), ``.git`` and the patterns of
``DIR/.kindlingignore`` left out. Entries the server would refuse (400 BUNDLE_INVALID) are refused here first, naming
the entry: a symlink that leaves the directory (absolute, or ``..`` out of it), a device, fifo or socket."""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import stat
import tarfile
from typing import Optional

#: What is never sent (a repository's history is not the function).
ALWAYS_IGNORED = (".git",)


def _ignore_patterns(root: str) -> list[str]:
    try:
        with open(os.path.join(root, ".kindlingignore"), encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except FileNotFoundError:
        return []


def _ignored(relative: str, patterns: list[str]) -> bool:
    """tar's --exclude: a pattern matches the entry's whole path (with or without ``./``) or any one of its names."""
    names = relative.split("/")
    for pattern in (*ALWAYS_IGNORED, *patterns):
        bare = pattern[2:] if pattern.startswith("./") else pattern
        bare = bare.rstrip("/")
        if fnmatch.fnmatchcase(relative, bare) or any(fnmatch.fnmatchcase(name, bare) for name in names):
            return True
    return False


def _link_stays_inside(relative: str, target: str) -> bool:
    if target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target))
    return resolved != ".." and not resolved.startswith("../")


def tar_directory(directory: str, *, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of the tar of ``directory`` (see the module). Raises :class:`ValueError` naming the first entry the
    server would refuse, or when the archive passes ``max_bytes`` (the server's ``--max-bundle-bytes``, if known)."""
    root = os.path.abspath(directory)
    if not os.path.isdir(root):
        raise ValueError(f"{directory} is not a directory")
    patterns = _ignore_patterns(root)
    entries: list[str] = []
    for current, dirs, files in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        kept_dirs = []
        for name in sorted(dirs):
            relative = name if rel_dir == "." else f"{rel_dir}/{name}"
            if _ignored(relative, patterns):
                continue
            entries.append(relative)
            # A symlink to a directory is an entry (a link), not walked into.
            if not os.path.islink(os.path.join(current, name)):
                kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(files):
            relative = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not _ignored(relative, patterns):
                entries.append(relative)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in sorted(entries):
            path = os.path.join(root, relative)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink(path)
                if not _link_stays_inside(relative, target):
                    raise ValueError(f"{relative}: a symlink to {target} leaves the bundle; the server refuses it (BUNDLE_INVALID)")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ValueError(f"{relative}: a device, fifo or socket cannot be in a bundle; the server refuses it (BUNDLE_INVALID)")
            info = tar.gettarinfo(path, arcname=relative)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
            if max_bytes is not None and out.tell() > max_bytes:
                raise ValueError(f"the bundle of {directory} is over {max_bytes} bytes (at {relative}); leave files out with .kindlingignore")
    data = out.getvalue()
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the bundle of {directory} is {len(data)} bytes, over {max_bytes}; leave files out with .kindlingignore")
    return data
