"""joblib's ``Parallel`` on the mesh (``import mesh.joblib``), against real nodes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from _helpers import job_ids, started_then_gated, wait_until
from test_local_modules import assert_cannot_see, import_from

joblib = pytest.importorskip("joblib")

from joblib.externals.loky import get_reusable_executor  # noqa: E402

import mesh  # noqa: E402
import mesh.joblib  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

STATS = textwrap.dedent(
    '''
    """The user's own module, next to their script: nodes have never seen it."""

    def collatz_steps(n, limit=10_000):
        steps = 0
        while n != 1 and steps < limit:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        return steps

    def check(x):
        if x == 13:
            raise ValueError(f"unlucky {x}")
        return x
    '''
)


@pytest.fixture
def stats(tmp_path: Path) -> Iterator[ModuleType]:
    yield from import_from(tmp_path / "userdir", f"stats_{secrets.token_hex(4)}", STATS)


def test_parallel_on_the_mesh_returns_what_the_default_backend_does(nodes, client, stats, tmp_path):
    for node in nodes:
        assert_cannot_see(node, tmp_path)
    calls = [joblib.delayed(stats.collatz_steps)(n) for n in range(1, 400)]
    expected = joblib.Parallel(n_jobs=2)(calls)  # the default backend (loky)
    get_reusable_executor().shutdown(wait=True)  # its worker processes, now
    jobs_before = len(job_ids(client))
    with joblib.parallel_config(backend="mesh", client=client):
        got = joblib.Parallel(n_jobs=-1)(calls)
    assert got == expected
    assert len(job_ids(client)) > jobs_before  # it did run on the mesh
    # keyword arguments, and a generator of results
    with joblib.parallel_config(backend="mesh", client=client):
        lazy = joblib.Parallel(n_jobs=-1, return_as="generator")(
            joblib.delayed(stats.collatz_steps)(n, limit=5) for n in range(1, 50)
        )
        assert list(lazy) == [stats.collatz_steps(n, limit=5) for n in range(1, 50)]


def test_n_jobs_minus_one_means_the_free_workers_of_the_mesh(nodes, client, tmp_path):
    backend = mesh.joblib.MeshBackend(client=client)
    assert backend.effective_n_jobs(-1) == 4  # two idle nodes, two workers each
    assert backend.effective_n_jobs(-2) == 3
    assert backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)
    started, gate = tmp_path / "started", tmp_path / "gate"
    busy = client.call(started_then_gated, str(started), str(gate), "done")
    wait_until(started.exists, what="a job to run")
    wait_until(lambda: backend.effective_n_jobs(-1) == 3, what="the busy worker to be reported")
    gate.touch()
    assert client.result(busy, timeout=30) == "done"


def test_a_failing_task_raises_its_own_exception(nodes, client, stats):
    with (
        joblib.parallel_config(backend="mesh", client=client),
        pytest.raises(ValueError, match="unlucky 13"),
    ):
        joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(stats.check)(x) for x in range(20))
    # the backend stays usable
    with joblib.parallel_config(backend="mesh", client=client):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(stats.check)(x) for x in range(3)) == [
            0,
            1,
            2,
        ]


def test_a_failing_task_kills_the_batches_still_running(nodes, client, stats, tmp_path):
    started, never = tmp_path / "started", tmp_path / "never"
    before = set(job_ids(client))
    tasks = [joblib.delayed(started_then_gated)(str(started), str(never), "stuck")]
    tasks += [joblib.delayed(stats.check)(x) for x in (1, 2, 13)]
    with (
        joblib.parallel_config(backend="mesh", client=client),
        pytest.raises(ValueError, match="unlucky 13"),
    ):
        joblib.Parallel(n_jobs=-1, batch_size=1, pre_dispatch="all")(tasks)
    jobs = [j for j in job_ids(client) if j not in before]  # in the order of the tasks
    assert len(jobs) == 4
    final = wait_until(
        lambda: (
            (s := client.status(jobs))[0] == "killed"
            and {"queued", "processing"}.isdisjoint(s)
            and s
        ),
        what="the stuck batch to be killed",
    )
    assert final[3] == "error"
    assert set(final[1:3]) <= {"done", "killed"}  # killed unless they finished first


def test_the_backend_uses_the_module_level_client_by_default(nodes, secret, stats):
    default = mesh.connect([n.address for n in nodes], secret)
    jobs_before = len(job_ids(default))
    with joblib.parallel_config(backend="mesh"):
        got = joblib.Parallel(n_jobs=-1)(
            joblib.delayed(stats.collatz_steps)(n) for n in range(1, 30)
        )
    assert got == [stats.collatz_steps(n) for n in range(1, 30)]
    assert len(job_ids(default)) > jobs_before


def test_the_scikit_learn_example_scores_as_on_one_machine(nodes, secret):
    pytest.importorskip("sklearn")
    env = dict(os.environ, MESH_PEERS=",".join(n.address for n in nodes), MESH_SECRET=secret)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sklearn_cv.py")],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "same scores : yes" in done.stdout
    assert "(4 workers)" in done.stdout  # the fixture's nodes, not a local mesh
