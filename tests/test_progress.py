"""Progress bars of ``result``/``iresult``: drawn on a terminal (a real pseudo-terminal
here), never when stderr is a pipe, and by default only for waits past ~2 s."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from mesh.client._progress import AUTO_DELAY_S, make

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import mesh

    def work(x, seconds, fail):
        time.sleep(seconds)
        if x == 2 and fail:
            raise ValueError(x)
        return x

    mode, seconds = sys.argv[1], float(sys.argv[2])
    mesh.connect()
    jids = mesh.map(work, range(8), seconds=seconds, fail="fail" in sys.argv)
    if mode == "result":
        try:
            mesh.result(jids, progress=True)
        except ValueError:
            print("raised")
    elif mode == "iresult":
        print(sorted(mesh.iresult(jids, ordered=False, progress=True)))
    elif mode == "auto":
        print(sum(mesh.result(jids)))
    elif mode == "off":
        print(sum(mesh.result(jids, progress=False)))
    mesh.close()
    """
)
BAR = re.compile(r"jobs: +\d+%\|.*\| *(\d+)/8 \[")


def run(
    tmp_path: Path,
    nodes,
    secret: str,
    *args: str,
    terminal: bool,
    size: tuple[int, int] = (24, 100),
) -> tuple[str, str]:
    """Run the script against the nodes; (stdout, stderr) with stderr on a pty (of ``size``
    rows and columns) or a pipe."""
    script = tmp_path / "progress_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MESH_PEERS=",".join(n.address for n in nodes), MESH_SECRET=secret,
               COLUMNS="120", TERM="xterm")  # fmt: skip
    argv = [sys.executable, str(script), *args]
    if not terminal:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, text=True)  # fmt: skip
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return out, b"".join(chunks).decode(errors="replace")


def test_result_draws_a_bar_with_counts_rate_and_errors_on_a_terminal(tmp_path, nodes, secret):
    out, err = run(tmp_path, nodes, secret, "result", "0.3", "fail", terminal=True)
    assert out == "raised\n"
    counts = [int(m.group(1)) for m in BAR.finditer(err)]
    assert counts and counts[-1] == 8, err  # done/total, up to every job
    assert counts == sorted(counts)  # it only moves forward
    final = err.rstrip().splitlines()[-1]
    assert "job/s" in final and "errors=1" in final, final  # rate and errors
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", err), err  # elapsed<ETA


def test_iresult_draws_a_bar_while_iterated(tmp_path, nodes, secret):
    # a terminal that reports no size (0x0) still gets a bar
    out, err = run(tmp_path, nodes, secret, "iresult", "0.2", terminal=True, size=(0, 0))
    assert out == f"{list(range(8))}\n"
    counts = [int(m.group(1)) for m in BAR.finditer(err)]
    assert counts and counts[-1] == 8, err
    assert "errors" not in err


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, nodes, secret):
    out, err = run(tmp_path, nodes, secret, "result", "0.3", "fail", terminal=False)
    assert out == "raised\n"
    assert not BAR.search(err) and "\r" not in err and "job/s" not in err, err


def test_by_default_a_bar_shows_only_for_waits_past_two_seconds(tmp_path, nodes, secret):
    # 8 jobs of 1.2 s on 4 workers: about 2.4 s of waiting, past AUTO_DELAY_S
    assert AUTO_DELAY_S == 2.0
    out, err = run(tmp_path, nodes, secret, "auto", "1.2", terminal=True)
    assert out == "28\n"
    assert [int(m.group(1)) for m in BAR.finditer(err)][-1:] == [8], err
    # quick jobs finish well within the delay: nothing is drawn
    out, err = run(tmp_path, nodes, secret, "auto", "0", terminal=True)
    assert out == "28\n"
    assert not BAR.search(err), err
    # progress=False: never, however long the wait
    out, err = run(tmp_path, nodes, secret, "off", "1.2", terminal=True)
    assert out == "28\n"
    assert not BAR.search(err), err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("progress", "single", "stream", "delay"),
    [(True, False, FakeTerminal(), 0.0), (None, False, FakeTerminal(), AUTO_DELAY_S),
     (True, True, FakeTerminal(), 0.0), (None, True, FakeTerminal(), None),
     (False, False, FakeTerminal(), None), (True, False, io.StringIO(), None)],
)  # fmt: skip
def test_when_a_bar_is_made(progress, single, stream, delay):
    bar = make(5, progress, single=single, stream=stream)
    assert (bar is None) == (delay is None)
    if bar is not None:
        assert bar.total == 5 and bar._delay_s == delay
    assert make(0, True, stream=FakeTerminal()) is None
