"""MLflow: where the store is, one run per stage execution and its inputs, naming, dead runs,
provenance (and why a run is not a real result), the registry, the served model and the
default model `src.predict` picks.
"""
