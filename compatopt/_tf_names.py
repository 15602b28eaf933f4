"""TF1's name counters: how graph mode uniquifies op names and variable scopes.

Both layers need them: the shim names its variables and slots with them, and the functional
checkpoint bridge (:mod:`compatopt.checkpoint`) derives the same slot names (``w/Adam``,
``w/Adam_1``) for a pytree without building any variable.
"""

from __future__ import annotations

import threading
from typing import Dict, Tuple


class NameCounters:
    """TF1 ``Graph.unique_name`` and ``variable_scope(None, default_name=...)`` counters."""

    def __init__(self) -> None:
        self.names_in_use: Dict[str, int] = {}
        self.scope_counts: Dict[str, int] = {}
        self.lock = threading.RLock()

    def unique_name(self, name: str) -> str:
        """TF1 ``Graph.unique_name``: ``w``, ``w_1``, ``w_2`` ... (case-insensitive)."""
        with self.lock:
            key = name.lower()
            i = self.names_in_use.get(key, 0)
            self.names_in_use[key] = i + 1
            if i == 0:
                return name
            base = key
            while key in self.names_in_use:
                key = f"{base}_{i}"
                i += 1
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
            self.scope_counts[name] = self.scope_counts.get(name, 0) + 1
            return name

    def snapshot(self) -> Tuple[Dict[str, int], Dict[str, int]]:
        with self.lock:
            return dict(self.names_in_use), dict(self.scope_counts)

    def restore(self, snap: Tuple[Dict[str, int], Dict[str, int]]) -> None:
        with self.lock:
            self.names_in_use, self.scope_counts = dict(snap[0]), dict(snap[1])
