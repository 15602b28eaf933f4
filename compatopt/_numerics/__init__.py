"""How TF1's arithmetic survives XLA, split by job.

* :mod:`~compatopt._numerics.barriers` — exactness: values hidden from XLA's and LLVM's
  rewrites (no FMA contraction, no division turned into a reciprocal multiply, no
  ``a / sqrt(b)`` into ``rsqrt``): ``opaque``, ``hide``, ``mul``, ``div``, ``sqrt``,
  ``rsqrt``, and the runtime zero that keeps constant inputs from re-opening them.
* :mod:`~compatopt._numerics.scheduling` — XLA:CPU scheduling only (one loop per use of a
  shared expression, loop order for in-place writes of donated buffers, inputs kept):
  ``recompute``, ``overwrite_after``, ``keep_input`` (and the primitive ``after``). Never
  changes a bit.
* :mod:`~compatopt._numerics.tf_ops` — TF's own op semantics: ``convert_to_tensor`` of a
  hyper-parameter, ``cast``, Eigen's ``sign``, and the scalar ops (``tf_add`` ... ``tf_pow``,
  glibc ``exp``/``log``/``cos``) the decay functions compute with.
* :mod:`~compatopt._numerics.rounding` — float16/bfloat16: one rounding per operation.
* :mod:`~compatopt._numerics.dtypes` — the dtypes TF1 computes in.

Rules import this package as ``N`` and use these names only.
"""

from compatopt._numerics.barriers import (div as div, hide as hide,
                                          initial_count as initial_count, mul as mul,
                                          opaque as opaque, rsqrt as rsqrt,
                                          runtime_zero as runtime_zero, sqrt as sqrt)
from compatopt._numerics.dtypes import (FLOAT_DTYPES as FLOAT_DTYPES,
                                        LOW_PRECISION as LOW_PRECISION,
                                        compute_dtype as compute_dtype,
                                        is_concrete as is_concrete, wide_dtype as wide_dtype)
from compatopt._numerics.rounding import (round_every_op as round_every_op,
                                          round_to_bfloat16 as round_to_bfloat16)
from compatopt._numerics.scheduling import (after as after, keep_input as keep_input,
                                            overwrite_after as overwrite_after,
                                            recompute as recompute)
from compatopt._numerics.tf_ops import cast as cast, sign as sign, to_tf_tensor as to_tf_tensor
