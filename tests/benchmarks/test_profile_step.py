"""Smoke test of the step profiler: the trace is read back with this JAX version."""

from __future__ import annotations

from benchmarks import _cases, profile_step


def test_union_of_intervals_counts_overlaps_once():
    assert profile_step._union_ns([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert profile_step._union_ns([]) == 0


def test_profile_case_reads_kernels_from_the_trace():
    result = profile_step.profile_case("compatopt", "momentum", _cases.Shape(1, 1 << 16),
                                       steps=2)
    assert result["kernels_per_step"] >= 2  # the slot loop and the parameter loop
    assert 0 < result["busy_ms"] <= result["kernel_ms"] + 1e-9
    loops = [k for k in result["per_kernel"] if "reads" in k]
    assert len(loops) == 2 and all(k["gb_per_s"] > 0 for k in loops)
    assert "momentum" in profile_step.render([result], _stamp())


def _stamp() -> dict:
    return {"date": "d", "backend": "cpu", "device_kind": "cpu", "cpu": "c", "cpu_cores": 2,
            "jax": "j", "jaxlib": "j", "optax": "o", "load_avg_at_start": 0.0}
