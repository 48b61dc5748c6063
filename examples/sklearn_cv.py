"""scikit-learn on the mesh through joblib: 5-fold cross-validation, fold by fold.

    .venv/bin/python examples/sklearn_cv.py     # needs scikit-learn: pip install -e '.[examples]'

Scores a random forest on scikit-learn's digits, first on this machine alone, then
with ``n_jobs=-1`` on the mesh (``MESH_PEERS``, else the nodes found on the LAN, else a
local mesh), and checks that both give the same scores. The only change to ordinary
scikit-learn code is ``import mesh.joblib`` and the ``parallel_config`` block.
"""

from __future__ import annotations

import time

import joblib
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score

import mesh
import mesh.joblib  # registers joblib's backend "mesh"


def main() -> None:
    X, y = load_digits(return_X_y=True)
    model = RandomForestClassifier(n_estimators=60, random_state=0)

    t0 = time.perf_counter()
    alone = cross_val_score(model, X, y, cv=5, n_jobs=1)
    alone_s = time.perf_counter() - t0

    with joblib.parallel_config(backend="mesh"):
        t0 = time.perf_counter()
        on_mesh = cross_val_score(model, X, y, cv=5, n_jobs=-1)
        mesh_s = time.perf_counter() - t0

    print(f"this machine: {alone.mean():.4f} accuracy in {alone_s:.2f} s")
    print(f"on the mesh : {on_mesh.mean():.4f} accuracy in {mesh_s:.2f} s "
          f"({mesh.Executor().workers} workers)")  # fmt: skip
    print("fold scores :", " ".join(f"{s:.4f}" for s in on_mesh))
    assert list(on_mesh) == list(alone), "the mesh must score exactly as this machine does"
    print("same scores : yes")


if __name__ == "__main__":
    main()
