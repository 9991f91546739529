"""Configuration: the params schema, loading params.yaml, the project layout."""
