"""A job past the node's --max-memory is stopped with MemoryLimitExceeded; the node
stays up with its full worker count."""

from __future__ import annotations

import pytest

import mesh


def hog(mib, hold):
    import time

    block = bytearray(mib * 2**20)  # zero-filled: every page is touched
    time.sleep(hold)
    return len(block)


def test_a_job_past_max_memory_is_stopped_and_named(node_factory, secret):
    node = node_factory(name="small", extra=("--max-memory", "150M"))
    with mesh.Client([node.address], secret) as c:
        jid = c.call(hog, 600, 30)
        with pytest.raises(mesh.MemoryLimitExceeded) as ei:
            c.result(jid, timeout=60)
        message = str(ei.value)
        assert jid in message and "small" in message
        assert "limit of 150 MiB per worker" in message
        assert isinstance(ei.value, mesh.JobKilled)
        assert c.status(jid) == "killed"
        node.wait_workers(2)
        assert c.result(c.call(hog, 1, 0), timeout=60) == 2**20  # 1 MiB is fine
