"""TF1's name counters: how graph mode uniquifies op names and variable scopes.

Both layers need them: the shim names its variables and slots with them, and the functional
checkpoint bridge (:mod:`compatopt.checkpoint`) derives the same slot names (``w/Adam``,
``w/Adam_1``) for a pytree without building any variable.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, Tuple

Journal = Dict[Tuple[str, str], Any]


class NameCounters:
    """TF1 ``Graph.unique_name`` and ``variable_scope(None, default_name=...)`` counters."""

    def __init__(self) -> None:
        self.names_in_use: Dict[str, int] = {}
        self.scope_counts: Dict[str, int] = {}
        self.lock = threading.RLock()
        self._journals = threading.local()

    # -- journals: what one call (on one thread) changed, so a failed call can undo just that
    @contextlib.contextmanager
    def journal(self) -> Iterator[Journal]:
        """Records this thread's changes to the counters until the block ends."""
        stack = self._journal_stack()
        journal: Journal = {}
        stack.append(journal)
        try:
            yield journal
        finally:
            # by identity: two journals with the same entries compare equal
            del stack[next(i for i, j in enumerate(stack) if j is journal)]

    def _journal_stack(self) -> list:
        stack = getattr(self._journals, "stack", None)
        if stack is None:
            stack = self._journals.stack = []
        return stack

    def _note(self, table: str, key: str) -> None:
        for journal in self._journal_stack():
            journal.setdefault((table, key), getattr(self, table).get(key))

    def undo(self, journal: Journal) -> None:
        """Puts back what the journaled call changed; other threads' changes stay."""
        with self.lock:
            for (table, key), previous in journal.items():
                if table not in ("names_in_use", "scope_counts"):
                    continue
                if previous is None:
                    getattr(self, table).pop(key, None)
                else:
                    getattr(self, table)[key] = previous

    def unique_name(self, name: str) -> str:
        """TF1 ``Graph.unique_name``: ``w``, ``w_1``, ``w_2`` ... (case-insensitive)."""
        with self.lock:
            key = name.lower()
            self._note("names_in_use", key)
            i = self.names_in_use.get(key, 0)
            self.names_in_use[key] = i + 1
            if i == 0:
                return name
            base = key
            while key in self.names_in_use:
                key = f"{base}_{i}"
                i += 1
            self._note("names_in_use", key)
            self.names_in_use[key] = 1
            return f"{name}_{i - 1}"

    def unique_scope(self, prefix: str) -> str:
        """TF1 ``variable_scope(None, default_name=prefix)``: how slot names are made."""
        with self.lock:
            name = prefix
            if self.scope_counts.get(name, 0):
                idx = 1
                while self.scope_counts.get(f"{prefix}_{idx}", 0):
                    idx += 1
                name = f"{prefix}_{idx}"
            self._note("scope_counts", name)
            self.scope_counts[name] = self.scope_counts.get(name, 0) + 1
            return name
