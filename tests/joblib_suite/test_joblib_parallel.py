"""joblib's ``test_parallel.py``, imported from the installed joblib, with "mesh" added
to its backend parametrisations (see conftest.py for what runs and what is marked)."""

from __future__ import annotations

import mesh.joblib  # noqa: F401 - registers "mesh" before joblib's module lists BACKENDS

from joblib.test import test_parallel as _joblib_tests  # isort: skip

# Lists test_parallel.py built at import without looking at BACKENDS: their decorators
# hold these very objects, read when pytest generates the items, after this.
for _backends in (
    _joblib_tests.PROCESS_BACKENDS,
    _joblib_tests.PARALLEL_BACKENDS,
    _joblib_tests.all_backends_for_context_manager,
):
    if "mesh" not in _backends:
        _backends.append("mesh")

globals().update(
    {name: value for name, value in vars(_joblib_tests).items() if name.startswith("test_")}
)
