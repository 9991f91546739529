"""A training stage over several seeds: `python -m src.seeds` (`experiments`) and the
record of the spread it writes and the report reads (`spread`)."""
