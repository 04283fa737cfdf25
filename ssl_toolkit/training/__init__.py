"""The pretraining loop's helpers: the objective and its steps, checkpoints and resume, the non-finite
guard, and the run log. None of them knows what kind of data it trains on."""
