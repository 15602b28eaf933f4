"""``Operation``: what ``minimize`` / ``apply_gradients`` return (TF1's train op)."""

from __future__ import annotations

from typing import Any, Callable


class Operation:
    """A train op. Eagerly the step has already run; ``run()`` runs it again.

    Attributes:
      name: TF1's op name (the optimizer's name, or the ``name`` argument).
    """

    __slots__ = ("name", "_fn")

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.name = name
        self._fn = fn

    def run(self, session: Any = None, feed_dict: Any = None) -> None:
        """Runs the step once more (``session``/``feed_dict`` are accepted and ignored)."""
        if feed_dict:
            raise ValueError("compatopt has no placeholders: pass the data to the loss "
                             "callable (or to the compatopt.function) instead of feed_dict")
        self._fn()

    def __repr__(self) -> str:
        return f"<compatopt.train.Operation '{self.name}'>"
