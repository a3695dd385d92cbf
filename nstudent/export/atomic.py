"""Artifacts appear whole or not at all: write beside the target, then rename."""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(target, suffix=""):
    """Yields a temporary path next to `target`; renames it over `target` on success.

    Works for files and folders. An exception (or a kill) leaves `target` as it
    was and at most a `.tmp-*` sibling, never a half-written `target`.
    """
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    tmp = os.path.join(tmp_dir, os.path.basename(target) + suffix)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(target):
            old = os.path.join(tmp_dir, "old")
            os.replace(target, old)  # a folder cannot be renamed over a folder
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)
