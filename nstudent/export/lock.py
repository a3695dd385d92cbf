"""One writer per output folder: a lock file beside it, taken atomically.

Two runs into one --out would each exit 0 with one's files over the other's. The
lock is `<out>.lock` (or `<out>.<role>.lock` for processes that share a folder by
design: the workers of one distributed run, the shards of one labeling), created
with O_EXCL and holding the holder's PID, host and start time; it goes when the
stage ends. A lock whose process is gone (same host, no such PID) is stale and
taken over; once held, the temporary folders of dead writers (`.*.tmp-*`, what
atomic_path leaves after a kill) are removed.
"""

import contextlib
import glob
import json
import os
import shutil
import socket
import time

from nstudent.errors import InputError


class OutputInUse(InputError):
    """Another live process writes the same output folder."""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def lock_path(out, role=""):
    out = os.path.abspath(out).rstrip(os.sep)
    return f"{out}.{role}.lock" if role else f"{out}.lock"


def _take(path):
    """True when this process created the lock file."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
    return True


def acquire(out, role=""):
    """Takes the lock of `out` (for `role`) or raises OutputInUse naming the holder.
    Returns the lock file's path."""
    path = lock_path(out, role)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(3):  # a stale lock removed under us by another newcomer: try again
        if _take(path):
            clean_dead_temporaries(out)
            return path
        try:
            with open(path) as f:
                holder = json.load(f)
        except (OSError, ValueError):  # being written, or removed meanwhile
            time.sleep(0.1)
            continue
        pid, host = int(holder.get("pid", -1)), holder.get("host", "?")
        if host == socket.gethostname() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its process is gone
            continue
        raise OutputInUse(
            f"--out={out} is being written by process {pid} on {host} (since "
            f"{holder.get('started', '?')}; lock {path}). Wait for it to finish or "
            "choose another --out; if that process is gone, remove the lock file.")
    raise OutputInUse(f"--out={out}: could not take its lock {path}.")


def release(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def output_lock(out, role=""):
    path = acquire(out, role)
    try:
        yield path
    finally:
        release(path)


def clean_dead_temporaries(out):
    """Removes what atomic_path left in `out` when its writer was killed (the lock is
    held, so no live writer owns them)."""
    for tmp in glob.glob(os.path.join(glob.escape(out), ".*.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
