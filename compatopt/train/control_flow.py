"""``tf.group``: one train op for several updates (TF1's ``control_flow_ops.group``).

In the shim an update runs when it is called (eager TF), so by the time ``group`` sees its
inputs they have run: ``assign`` returned its Variable, ``apply_gradients`` /
``minimize`` an :class:`~compatopt.train.Operation`. ``group`` returns one
:class:`~compatopt.train.Operation` standing for them (TF2 eager returns ``None``); its
``loss`` is the first grouped ``minimize`` op's, so a ``compatopt.function`` step returning
it returns that loss. To run the updates again, call the step that builds them again.

Example:
  >>> import compatopt as co
  >>> step = co.Variable(0, name="step", trainable=False)
  >>> op = co.group(step.assign(step + 1), name="train")
  >>> op.name, int(step.value)
  ('train', 1)
"""

from __future__ import annotations

from typing import Any, Optional

from compatopt.train._operation import Operation

__all__ = ["group"]


def _flatten(inputs: Any) -> list:
    if isinstance(inputs, (list, tuple)):
        return [x for item in inputs for x in _flatten(item)]
    return [inputs]


def group(*inputs: Any, name: Optional[str] = None) -> Operation:
    """``tf.group(*inputs, name=None)``: an Operation for updates that have already run.

    ``inputs`` may nest lists and tuples (TF1 flattens them) of Operations, Variables,
    arrays or ``None``. ``run()`` raises: the grouped updates ran when they were built.
    """
    ops = [x for x in _flatten(list(inputs)) if isinstance(x, Operation)]
    loss = next((op.loss for op in ops if op.loss is not None), None)
    op_name = name or "group_deps"

    def rerun() -> None:
        raise RuntimeError(f"compatopt.group: '{op_name}' groups updates that ran when it was "
                           f"built; call the step (the compatopt.function) that builds them "
                           f"again instead of run()")

    return Operation(op_name, rerun, loss=loss)
