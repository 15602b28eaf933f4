"""``Operation``: what ``minimize`` / ``apply_gradients`` return (TF1's train op)."""

from __future__ import annotations

from typing import Any, Callable


class Operation:
    """A train op. Eagerly the step has already run; ``run()`` runs it again.

    Attributes:
      name: TF1's op name (the optimizer's name, or the ``name`` argument).
      loss: for ``minimize``'s op, the value of ``loss()`` in the step that ran (TF1's
        ``sess.run([loss, train_op])`` without a second forward pass), updated by each
        ``run()``; a ``compatopt.function`` step returning this op returns it computed in
        the same compiled step. ``None`` for ``apply_gradients``' op.
    """

    __slots__ = ("name", "_fn", "loss")

    def __init__(self, name: str, fn: Callable[[], Any], loss: Any = None) -> None:
        self.name = name
        self._fn = fn
        self.loss = loss

    def run(self, session: Any = None, feed_dict: Any = None) -> None:
        """Runs the step once more (``session``/``feed_dict`` are accepted and ignored)."""
        if feed_dict:
            raise ValueError("compatopt has no placeholders: pass the data to the loss "
                             "callable (or to the compatopt.function) instead of feed_dict")
        result = self._fn()
        if isinstance(result, Operation):  # a compiled step's op: its loss is this run's
            self.loss = result.loss
        elif result is not None:
            self.loss = result

    def __repr__(self) -> str:
        return f"<compatopt.train.Operation '{self.name}'>"
