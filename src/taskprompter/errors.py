"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits non-zero."""

from __future__ import annotations

import errno
import os


class TaskPrompterError(Exception):
    """Base class: a problem with the user's input (file, config, checkpoint, label), not a bug."""


class DataError(TaskPrompterError):
    """A dataset file is missing, unreadable, or holds values outside its task's range."""


class ConfigError(TaskPrompterError):
    """A config file or `--set` override is invalid (unknown key, wrong type)."""


class CheckpointError(TaskPrompterError):
    """A checkpoint cannot be read or does not match the model (the message lists the differing keys)."""


def os_error_message(err: OSError) -> str:
    """One line for an OSError a user can fix (a full disk, a folder without write permission, a read-only file
    system ...): the system's own words, the path, and what to do."""
    path = err.filename if err.filename is not None else "?"
    reason = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
    todo = {
        errno.ENOSPC: "free space there or write somewhere else (e.g. another --out)",
        errno.EDQUOT: "free space within your quota or write somewhere else (e.g. another --out)",
        errno.EACCES: "check its permissions, or use another path (for outputs: another --out)",
        errno.EPERM: "check its permissions, or use another path (for outputs: another --out)",
        errno.EROFS: "use a folder on a writable file system (e.g. another --out)",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
        errno.EISDIR: "give a file, not a folder",
        errno.EEXIST: "remove it or choose another path",
    }.get(err.errno, "check the path and the file system")
    return f"{reason}: {path} ({todo})"


def one_line(message: str) -> str:
    """A message as one line. An error raised in a DataLoader worker arrives wrapped in the worker's traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its own message is the last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Traceback" in message:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)
