"""``import mesh.joblib`` registers the joblib backend ``"mesh"``.

    with joblib.parallel_config(backend="mesh"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

Needs joblib (``pip install lanmesh[joblib]``); see ``mesh.client._joblib`` for the options.
"""

from __future__ import annotations

from mesh.client._joblib import MeshBackend, register

__all__ = ["MeshBackend"]

register()
