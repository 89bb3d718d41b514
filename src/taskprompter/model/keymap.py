"""Renaming state-dict keys between two naming schemes with a table of templates (released checkpoints' names and
ours): ``{name}`` placeholders match a block/level index (``i``, ``l``), a task (``t``) or the rest of a key (``p``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

PLACEHOLDERS = {"i": r"\d+", "l": r"\d+", "t": r"\w+", "p": r".+"}


def _compile(template: str) -> re.Pattern:
    rx = re.escape(template)
    for name, part in PLACEHOLDERS.items():
        rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>{part})")
    return re.compile(rx + "$")


class KeyMap:
    """``(ours, theirs)`` template pairs; the first pair whose pattern matches renames a key, others stay as is."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self._to_theirs = [(_compile(ours), theirs) for ours, theirs in self.pairs]
        self._to_ours = [(_compile(theirs), ours) for ours, theirs in self.pairs]

    @staticmethod
    def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str:
        for rx, template in table:
            m = rx.match(key)
            if m:
                return template.format(**m.groupdict())
        return key

    def to_theirs(self, key: str) -> str:
        return self._rename(key, self._to_theirs)

    def to_ours(self, key: str) -> str:
        return self._rename(key, self._to_ours)
