"""The report's sections, each a list of markdown lines: the overview (banner, sources,
summary, tuning), task 1 and one training stage's."""
