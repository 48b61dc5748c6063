"""PiCloud's programs (../shared/seeds/) run with ``import cloud`` replaced by
``import mesh.cloud as cloud``, ported only as Python 3 requires.

Each program runs as a script of its own in a folder of its own, against two real
nodes (``MESH_PEERS``, PiCloud's "real cloud") or on a simulator it starts itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import NodeProc

import mesh
import mesh.cloud as cloud


def run(script: str, folder: Path, env: dict[str, str] | None = None) -> str:
    """Run ``script`` as the user would (``python script.py`` in ``folder``); its stdout."""
    path = folder / "program.py"
    path.write_text(textwrap.dedent(script))
    full = dict(os.environ, **(env or {}))
    done = subprocess.run([sys.executable, str(path)], cwd=folder, env=full,
                          capture_output=True, text=True, timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def mesh_env(nodes: list[NodeProc], secret: str) -> dict[str, str]:
    return {"MESH_PEERS": ",".join(n.address for n in nodes), "MESH_SECRET": secret}


def test_the_tutorial_session_on_the_simulator(tmp_path: Path) -> None:
    """The tutorial chapter (seed 000): simulator, call, result, map, iresult, status,
    kill, join, with PiCloud's names."""
    out = run(
        """
        import time
        import mesh.cloud as cloud

        cloud.start_simulator()
        print("simulated", cloud.is_simulated())

        def f(x):
            return x**2

        jid = cloud.call(f, 2**16)
        print("call", cloud.result(jid))
        jids = cloud.map(f, range(10))
        print("map", cloud.result(jids))
        print("iresult", list(cloud.iresult(jids)))
        cloud.join(jids)
        print("status", set(cloud.status(jids)))

        def slow():
            time.sleep(60)

        victim = cloud.call(slow)
        cloud.kill(victim)
        print("killed", cloud.status(victim))
        """,
        tmp_path,
    )
    assert out.splitlines() == [
        "simulated True",
        "call 4294967296",
        f"map {[x * x for x in range(10)]}",
        f"iresult {[x * x for x in range(10)]}",
        "status {'done'}",
        "killed killed",
    ]


PI = """
import random
import mesh.cloud as cloud

numTests = 20000

def monteCarlo(num_test):
    numInCircle = 0
    for _ in range(num_test):
        x = random.random()
        y = random.random()
        if x*x + y*y < 1.0:
            numInCircle += 1
    return numInCircle

{calc}

if __name__ == '__main__':
    pi = calcPi()
    print('Pi determined to be %s' % pi)
"""

PI_VERSIONS = {
    "incorrect": """
def calcPi():
    jid = cloud.call(monteCarlo, numTests, _high_cpu=True)
    numInCircle = cloud.result(jid)
    pi = (4 * numInCircle) / float(numTests)
    return pi
""",
    "almost": """
def calcPi():
    num_parallel = 8
    testsPerCall = numTests // num_parallel
    jids = []
    for _ in range(num_parallel):
        jids.append(cloud.call(monteCarlo, testsPerCall, _high_cpu=True))
    numInCircle = 0
    for jid in jids:
        numInCircle += cloud.result(jid)
    pi = (4 * numInCircle) / float(numTests)
    return pi
""",
    "correct": """
def calcPi():
    num_parallel = 8
    testsPerCall = numTests // num_parallel
    jids = cloud.map(monteCarlo, [testsPerCall] * num_parallel, _high_cpu=True)
    numInCircleList = cloud.result(jids)
    numInCircle = sum(numInCircleList)
    pi = (4 * numInCircle) / float(numTests)
    return pi
""",
}


@pytest.mark.parametrize("version", sorted(PI_VERSIONS))
def test_the_pi_example(version: str, tmp_path: Path, mesh_env: dict[str, str]) -> None:
    """Seed 002's Monte Carlo pi in its three versions, with ``_high_cpu=True``."""
    out = run(PI.format(calc=PI_VERSIONS[version]), tmp_path, mesh_env)
    pi = float(out.strip().rsplit(" ", 1)[1])
    assert 2.9 < pi < 3.4, out


HETLEV = """
def levenshtein(a, b):
    "Calculates the Levenshtein distance between a and b."
    n, m = len(a), len(b)
    if n > m:
        a, b = b, a
        n, m = m, n
    current = range(n + 1)
    for i in range(1, m + 1):
        previous, current = current, [i] + [0] * n
        for j in range(1, n + 1):
            add, delete = previous[j] + 1, current[j - 1] + 1
            change = previous[j - 1]
            if a[j - 1] != b[i - 1]:
                change = change + 1
            current[j] = min(add, delete, change)
    return current[n]
"""

CLOSESTWORDS = """
import hetlev

CORPUS = ["barge", "bag", "badge", "angel", "age", "cheese", "cheesed", "cheers"]

class Corpusinator(object):
    def __init__(self, corpus=None):
        self.corpus = set(corpus or CORPUS)

    def findClosestWords(self, words, n=10):
        results = {}
        for word in words:
            tempresults = sorted((hetlev.levenshtein(word, ref), ref) for ref in self.corpus)
            results[word] = tempresults[:n]
        return results

def caller(words, n=10):
    c = Corpusinator()
    return c.findClosestWords(words, n)
"""


def test_the_blog_session(tmp_path: Path, mesh_env: dict[str, str]) -> None:
    """Seed 004: square, shuffler, distances from the user's hetlev.py, and the
    closest-words class and wrapper from the user's closestwords.py (both only in
    the script's folder, so they travel by value)."""
    (tmp_path / "hetlev.py").write_text(HETLEV)
    (tmp_path / "closestwords.py").write_text(CLOSESTWORDS)
    out = run(
        """
        import random
        import mesh.cloud as cloud
        import hetlev
        import closestwords

        def square(x):
            return x**2

        cid = cloud.call(square, 10)
        print(cloud.result(cid))

        def shuffler(x):
            xl = list(x)
            random.shuffle(xl)
            return ''.join(xl)

        cid = cloud.call(shuffler, 'Welcome to chmullig.com')
        print(sorted(cloud.result(cid)) == sorted('Welcome to chmullig.com'))

        words = ['kitten', 'sitten', 'sittin', 'sitting', 'cat', 'kitty', 'smitten']
        word = 'kitten'

        def distances(word, comparisonWords):
            results = []
            for otherWord in comparisonWords:
                results.append(hetlev.levenshtein(word, otherWord))
            return results

        cid = cloud.call(distances, word, words)
        print(list(zip(words, cloud.result(cid))))

        cid = cloud.call(closestwords.caller, ['bagel'], 3)
        print(cloud.result(cid))
        c = closestwords.Corpusinator()
        cid = cloud.call(c.findClosestWords, ['bagel', 'cheese'], 2)
        print(cloud.result(cid))
        """,
        tmp_path,
        mesh_env,
    )
    lines = out.splitlines()
    assert lines[0] == "100"
    assert lines[1] == "True"
    assert lines[2] == str(
        [("kitten", 0), ("sitten", 1), ("sittin", 2), ("sitting", 3), ("cat", 5),
         ("kitty", 2), ("smitten", 2)]
    )  # fmt: skip
    here: dict[str, object] = {}
    exec(HETLEV, here)  # what the same code gives in this process
    lev = here["levenshtein"]

    def closest(word: str, n: int) -> list[tuple[int, str]]:
        corpus = {"barge", "bag", "badge", "angel", "age", "cheese", "cheesed", "cheers"}
        return sorted((lev(word, ref), ref) for ref in corpus)[:n]  # type: ignore[operator]

    assert lines[3] == str({"bagel": closest("bagel", 3)})
    assert lines[4] == str({"bagel": closest("bagel", 2), "cheese": closest("cheese", 2)})


def test_the_thumbnails_example_through_the_file_store(
    tmp_path: Path, mesh_env: dict[str, str]
) -> None:
    """Seed 002's thumbnails, "Correct" and "Even Better": push the images once, then
    jobs read them with getf and store thumbnails with putf; the script gets them."""
    image = pytest.importorskip("PIL.Image")
    for i, colour in enumerate(["red", "green"]):
        image.new("RGB", (300, 200), colour).save(tmp_path / f"photo{i}.jpg")
    out = run(
        """
        import glob, os
        from functools import reduce
        from io import BytesIO
        from PIL import Image
        import mesh.cloud as cloud

        sizes = [(128, 128), (64, 64), (32, 32)]

        def resizeImage(img_name):
            thumb_names = []
            imgf = cloud.files.getf(img_name)
            img_seekable = BytesIO(imgf.read())
            name_start, ext = os.path.splitext(img_name)
            for size in sizes:
                img_seekable.seek(0)
                img = Image.open(img_seekable)
                img.thumbnail(size, Image.LANCZOS)
                outFile = BytesIO()
                img.save(outFile, "JPEG")
                outFile.seek(0)
                thumb_name = name_start + '.thumbnail.' + str(size[0]) + '.jpg'
                cloud.files.putf(outFile, thumb_name)
                thumb_names.append(thumb_name)
            return thumb_names

        def main():
            cloud_files = cloud.files.list()
            img_files = sorted(glob.glob("*.jpg"))
            for img_file in img_files:
                if img_file not in cloud_files:
                    cloud.files.put(img_file)
            jids = cloud.map(resizeImage, img_files)
            thumb_names_list = cloud.result(jids)
            thumb_names = reduce(lambda x, y: x + y, thumb_names_list)
            print('Generated thumbnails: ' + str(thumb_names))
            for thumb_name in thumb_names:
                cloud.files.get(thumb_name, thumb_name)

        if __name__ == '__main__':
            main()
        """,
        tmp_path,
        mesh_env,
    )
    names = [f"photo{i}.thumbnail.{s}.jpg" for i in range(2) for s in (128, 64, 32)]
    assert out.strip() == f"Generated thumbnails: {names}"
    for name in names:
        size = int(name.split(".")[2])
        with image.open(tmp_path / name) as thumb:
            assert max(thumb.size) == size


def test_cloud_exception_catches_a_failing_job(tmp_path: Path, mesh_env: dict[str, str]) -> None:
    """``except cloud.CloudException`` around a failing job catches it, and so does the
    job's own exception type; the message names the job's error."""
    out = run(
        """
        import mesh.cloud as cloud

        def bad(x):
            return 1 / x

        jid = cloud.call(bad, 0)
        try:
            cloud.result(jid)
        except cloud.CloudException as exc:
            print("caught", type(exc).__name__, isinstance(exc, ZeroDivisionError), exc.jid == jid)
            print("cause", type(exc.__cause__).__name__)
        try:
            cloud.result(cloud.map(bad, [1, 0]))
        except ZeroDivisionError as exc:
            print("also", isinstance(exc, cloud.CloudException))
        """,
        tmp_path,
        mesh_env,
    )
    assert out.splitlines() == [
        "caught ZeroDivisionError True True",
        "cause ZeroDivisionError",
        "also True",
    ]


def test_setkey_uses_the_real_mesh(tmp_path: Path, mesh_env: dict[str, str]) -> None:
    """PiCloud's ``setkey`` (with keys of PiCloud's shape) means "the real mesh": the
    nodes of MESH_PEERS here, not a simulator."""
    out = run(
        """
        import mesh.cloud as cloud
        cloud.setkey(1234, 'a5f0c1b2d3e4')
        print(cloud.is_simulated(), cloud.result(cloud.call(pow, 2, 10)))
        """,
        tmp_path,
        mesh_env,
    )
    assert out.split() == ["False", "1024"]


def test_picloud_options_become_mesh_options() -> None:
    """Each PiCloud option's translation, exactly."""
    t = cloud.translate_options
    assert t({"_high_cpu": True, "x": 1}) == {"x": 1}
    assert t({"_type": "f2"}) == {"_cores": 2}
    assert t({"_type": "c2", "_cores": 3}) == {"_cores": 3}
    assert t({"_max_runtime": 2}) == {"_max_runtime": 120.0}
    assert t({"_restartable": False}) == {"_retries": 0}
    assert t({"_profile": True, "_fast_serialization": 2, "_label": "a"}) == {"_label": "a"}
    # PiCloud's own meaning on the mesh: passed on as they are
    deps = {"_priority": 1, "_depends_on": ["j-1"], "_kill_process": True}
    assert t(deps) == deps
    assert t({"_priority": None}) == {}
    with pytest.raises(ValueError, match="_type 'x9' is not a PiCloud type"):
        t({"_type": "x9"})
    with pytest.raises(TypeError, match="_priority must be an integer"):
        t({"_priority": "high"})


def test_cloud_exception_keeps_the_original_error() -> None:
    """The combined exception is both types, keeps args and attributes, and a type
    that cannot be combined still becomes a CloudException naming it."""
    original = KeyError("k")
    original.jid = "j1"  # type: ignore[attr-defined]
    combined = cloud._as_cloud(original)
    assert isinstance(combined, KeyError) and isinstance(combined, cloud.CloudException)
    assert combined.args == ("k",) and combined.jid == "j1"  # type: ignore[attr-defined]
    timeout = cloud._as_cloud(mesh.MeshTimeout("3 jobs not done after 1 s"))
    assert isinstance(timeout, cloud.CloudTimeoutError) and isinstance(timeout, TimeoutError)
    assert cloud._as_cloud(KeyboardInterrupt()).__class__ is KeyboardInterrupt
