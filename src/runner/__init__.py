"""Running a stage: one writer at a time (`lock`), and what every training stage does
around `fit` (`training_stage`)."""
