"""bench/core.py's floors run and carry what they claim to (no figures asserted)."""

from __future__ import annotations

import argparse

import pytest

from bench.core import Config, bench_relay_floor


@pytest.mark.parametrize("wire", [False, True], ids=["relay", "wire"])
def test_the_floors_time_every_call_and_read_cpu(wire: bool) -> None:
    # The wire floor raises if a value comes back other than the one sent: its Submit,
    # Run, Ran and Results went through the real codec, encryption and pickling both ways.
    cfg = Config(argparse.Namespace(quick=True, repeat=1))
    cfg.latency_calls = 30
    out = bench_relay_floor(cfg, wire=wire)
    assert out["latency_us"]["n"] == 30
    assert 0 < out["latency_us"]["p50"] <= out["latency_us"]["p99"]
    assert set(out["cpu_us_per_call"]) == {"client", "nodes_and_workers"}


def test_the_codec_bench_carries_its_messages_encrypted_and_plain() -> None:
    # _codec_round raises unless each message came out whole on the other side.
    from bench.core import bench_codec

    cfg = Config(argparse.Namespace(quick=True, repeat=1))
    out = bench_codec(cfg)
    assert set(out) == {"encrypted", "plain", "small_submit_us_added_by_encryption"}
    assert out["encrypted"]["arg_mb_per_s"] > 0 and out["plain"]["small_submit_us"] > 0
