"""Records BERT's ``AdamWeightDecayOptimizer`` (as a TF1 hook-style subclass) in TF1 graph
mode, for ``tests/test_tf_math.py``: the same subclass written with ``compatopt.tf_math``
must replay it bit for bit.

Run with TensorFlow 2.21: ``python tools/make_tf1_adamw_fixtures.py [out_dir]``. Writes
``adamw.npz``: initial ``kernel``/``bias``, the fed gradients ``grad/<v>`` [STEPS, ...], and
``kernel``/``bias``/``m``/``v`` after every step (``<name>/<v>`` [STEPS, ...]).
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

STEPS = 8
HYPER = dict(learning_rate=0.01, weight_decay_rate=0.01, beta_1=0.9, beta_2=0.999,
             epsilon=1e-6, exclude_from_weight_decay=["bias"])
SHAPES = {"kernel": (5, 13), "bias": (13,)}


def inputs() -> dict:
    rs = np.random.RandomState(7)
    out = {n: rs.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    for n, s in SHAPES.items():
        out[f"grad/{n}"] = (rs.standard_normal((STEPS,) + s) * 0.5).astype(np.float32)
    return out


def main(out_dir: str) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()

    class AdamWeightDecayOptimizer(v1.train.Optimizer):
        def __init__(self, learning_rate, weight_decay_rate=0.0, beta_1=0.9, beta_2=0.999,
                     epsilon=1e-6, exclude_from_weight_decay=None,
                     name="AdamWeightDecayOptimizer"):
            super().__init__(False, name)
            self.learning_rate, self.weight_decay_rate = learning_rate, weight_decay_rate
            self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
            self.exclude_from_weight_decay = exclude_from_weight_decay

        def _create_slots(self, var_list):
            for v in var_list:
                self._zeros_slot(v, "m", "adam_m")
                self._zeros_slot(v, "v", "adam_v")

        def _prepare(self):
            self._lr_t = tf.convert_to_tensor(self.learning_rate)

        def _resource_apply_dense(self, grad, param):
            m, v = self.get_slot(param, "m"), self.get_slot(param, "v")
            next_m = tf.multiply(self.beta_1, m) + tf.multiply(1.0 - self.beta_1, grad)
            next_v = tf.multiply(self.beta_2, v) + tf.multiply(1.0 - self.beta_2,
                                                               tf.square(grad))
            update = next_m / (tf.sqrt(next_v) + self.epsilon)
            if self._do_use_weight_decay(param.name):
                update += self.weight_decay_rate * param
            update_with_lr = self._lr_t * update
            return tf.group(param.assign(param - update_with_lr), m.assign(next_m),
                            v.assign(next_v))

        def _do_use_weight_decay(self, name):
            if not self.weight_decay_rate:
                return False
            return not any(re.search(r, name) for r in self.exclude_from_weight_decay or ())

    d = inputs()
    out = {k: v for k, v in d.items()}
    with tf.Graph().as_default():
        vs = {n: v1.Variable(d[n], name=n, use_resource=True) for n in SHAPES}
        feeds = {n: v1.placeholder(tf.float32, SHAPES[n]) for n in SHAPES}
        opt = AdamWeightDecayOptimizer(**HYPER)
        train = opt.apply_gradients([(feeds[n], vs[n]) for n in SHAPES])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            rows: dict = {}
            for k in range(STEPS):
                sess.run(train, {feeds[n]: d[f"grad/{n}"][k] for n in SHAPES})
                for n in SHAPES:
                    rows.setdefault(f"param/{n}", []).append(sess.run(vs[n]))
                    rows.setdefault(f"m/{n}", []).append(sess.run(opt.get_slot(vs[n], "m")))
                    rows.setdefault(f"v/{n}", []).append(sess.run(opt.get_slot(vs[n], "v")))
    out.update({k: np.stack(r) for k, r in rows.items()})
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "adamw.npz"), **out)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(here, "..", "tests", "fixtures", "tf1", "adamw"))
