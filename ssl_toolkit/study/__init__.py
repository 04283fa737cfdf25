"""Studies: a grid of config overrides × seeds, run one (cell, seed) at a time, and their reports."""
