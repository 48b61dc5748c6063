"""bench/core.py's floors run and carry what they claim to (no figures asserted)."""

from __future__ import annotations

import argparse

import pytest

from bench.core import Config, bench_relay_floor


@pytest.mark.parametrize("wire", [False, True], ids=["relay", "wire"])
def test_the_floors_time_every_call_and_read_cpu(wire: bool) -> None:
    # The wire floor raises if a value comes back other than the one sent: its Submit,
    # Run, Ran and Results went through the real codec, MACs and pickling both ways.
    cfg = Config(argparse.Namespace(quick=True, repeat=1))
    cfg.latency_calls = 30
    out = bench_relay_floor(cfg, wire=wire)
    assert out["latency_us"]["n"] == 30
    assert 0 < out["latency_us"]["p50"] <= out["latency_us"]["p99"]
    assert set(out["cpu_us_per_call"]) == {"client", "nodes_and_workers"}
