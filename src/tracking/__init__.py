"""MLflow: the store, one run per stage execution, naming, dead runs, the registry and the
served model.
"""
