"""joblib's own test suite against the mesh backend (see conftest.py)."""
