"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits non-zero."""

from __future__ import annotations


class TaskPrompterError(Exception):
    """Base class: a problem with the user's input (file, config, checkpoint, label), not a bug."""


class DataError(TaskPrompterError):
    """A dataset file is missing, unreadable, or holds values outside its task's range."""


class ConfigError(TaskPrompterError):
    """A config file or `--set` override is invalid (unknown key, wrong type)."""


class CheckpointError(TaskPrompterError):
    """A checkpoint cannot be read or does not match the model (the message lists the differing keys)."""
