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

MODEL = textwrap.dedent(
    '''
    """A user's module with an initializer that loads a model into a global."""

    MODEL = None

    def load(weight):
        global MODEL
        MODEL = {"weight": weight}

    def predict(x):
        return MODEL["weight"] * x
    '''
)


@pytest.fixture
def model(tmp_path: Path) -> Iterator[ModuleType]:
    yield from import_from(tmp_path / "userdir", f"model_{secrets.token_hex(4)}", MODEL)


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


# ---- initializer/initargs, and the backend named inside a job (issue 17) ----


def _init_worker(limit: int, log: str) -> None:
    """A real initializer's kind of work: process-wide state, here the recursion limit."""
    sys.setrecursionlimit(limit)
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")


def _failing_init(log: str) -> None:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("no licence server")


def _pid_and_limit(_item: object = None) -> tuple[int, int]:
    return os.getpid(), sys.getrecursionlimit()


def _inits(log: Path) -> list[int]:
    return [int(pid) for pid in log.read_text().split()] if log.exists() else []


def test_an_executor_initializer_runs_once_in_each_worker_before_its_jobs(nodes, client, tmp_path):
    log = tmp_path / "inits"
    with mesh.Executor(client=client, initializer=_init_worker, initargs=(4321, str(log))) as ex:
        futures = [ex.submit(_pid_and_limit) for _ in range(12)]
        got = [f.result(timeout=60) for f in futures]
        got += list(ex.map(_pid_and_limit, range(12), chunksize=2))
    assert {limit for _, limit in got} == {4321}  # every job saw what the initializer set
    inits = _inits(log)
    assert len(inits) == len(set(inits))  # once per worker process, not once per job
    assert {pid for pid, _ in got} <= set(inits)  # and before the first job there
    # the client's other jobs do not run it; another executor runs its own
    client.result(client.map(_pid_and_limit, range(8)), timeout=60)
    assert _inits(log) == inits
    log2 = tmp_path / "inits2"
    with mesh.Executor(client=client, initializer=_init_worker, initargs=(5432, str(log2))) as ex:
        again = list(ex.map(_pid_and_limit, range(8)))
    assert {limit for _, limit in again} == {5432}
    assert {pid for pid, _ in again} <= set(_inits(log2))


def test_a_failing_initializer_fails_the_job_and_is_tried_again_before_the_next(
    nodes, client, tmp_path
):
    log = tmp_path / "inits"
    with mesh.Executor(client=client, initializer=_failing_init, initargs=(str(log),)) as ex:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="no licence server"):
                ex.submit(_pid_and_limit).result(timeout=60)
    assert len(_inits(log)) == 2
    with pytest.raises(TypeError, match="initializer must be callable"):
        mesh.Executor(client=client, initializer="setup")


def test_the_backend_runs_the_initializer_of_parallel_config_or_of_the_parallel_call(
    nodes, client, tmp_path
):
    log = tmp_path / "inits"
    with joblib.parallel_config(
        backend="mesh", client=client, initializer=_init_worker, initargs=(4321, str(log))
    ):
        got = joblib.Parallel(n_jobs=-1, batch_size=1)(
            joblib.delayed(_pid_and_limit)() for _ in range(16)
        )
        assert {limit for _, limit in got} == {4321}
        inits = _inits(log)
        assert len(inits) == len(set(inits))
        assert {pid for pid, _ in got} <= set(inits)
        # Parallel's own initializer wins, for that call
        log2 = tmp_path / "inits2"
        got = joblib.Parallel(
            n_jobs=-1, batch_size=1, initializer=_init_worker, initargs=(5432, str(log2))
        )(joblib.delayed(_pid_and_limit)() for _ in range(16))
        assert {limit for _, limit in got} == {5432}
        assert {pid for pid, _ in got} <= set(_inits(log2))


def _nested_on_the_mesh(n: int) -> tuple[int, list[int], bool, bool]:
    import joblib

    stand_in = "mesh.client._joblib" not in sys.modules  # joblib imported, backend not yet
    known = "mesh" in joblib.parallel.BACKENDS
    pids = joblib.Parallel(n_jobs=-1, backend="mesh")(joblib.delayed(os.getpid)() for _ in range(n))
    return os.getpid(), pids, stand_in, known


def test_a_job_can_name_the_mesh_backend_and_its_tasks_run_in_the_job(nodes, client):
    pid, inner, lazily, known = client.result(client.call(_nested_on_the_mesh, 5), timeout=60)
    assert known and lazily  # registered when joblib was imported, loaded only when used
    assert inner == [pid] * 5  # the job holds one slot: its tasks run in it
    # the same inside a Parallel call on the mesh
    with joblib.parallel_config(backend="mesh", client=client):
        outer = joblib.Parallel(n_jobs=-1, batch_size=1)(
            joblib.delayed(_nested_on_the_mesh)(3) for _ in range(4)
        )
    assert all(inner == [pid] * 3 for pid, inner, _, _ in outer)


def test_each_parallel_call_starts_from_the_default_batch_size(nodes, client):
    backend = mesh.joblib.MeshBackend(client=client)
    parallel = joblib.Parallel(n_jobs=2, backend=backend)
    for _ in range(2):
        assert parallel(joblib.delayed(abs)(-x) for x in range(300)) == list(range(300))
        assert backend._effective_batch_size == backend._DEFAULT_EFFECTIVE_BATCH_SIZE
        assert backend._smoothed_batch_duration == backend._DEFAULT_SMOOTHED_BATCH_DURATION


def test_a_global_the_initializer_sets_in_code_shipped_by_value_is_seen_by_every_job(
    nodes, client, model, tmp_path
):
    for node in nodes:
        assert_cannot_see(node, tmp_path)
    # each submission, and each of joblib's batches, is a pickle of its own
    with mesh.Executor(client=client, initializer=model.load, initargs=(3,)) as ex:
        assert [ex.submit(model.predict, x).result(timeout=60) for x in range(8)] == [
            3 * x for x in range(8)
        ]
    with joblib.parallel_config(
        backend="mesh", client=client, initializer=model.load, initargs=(5,)
    ):
        got = joblib.Parallel(n_jobs=-1, batch_size=1)(
            joblib.delayed(model.predict)(x) for x in range(16)
        )
    assert got == [5 * x for x in range(16)]
