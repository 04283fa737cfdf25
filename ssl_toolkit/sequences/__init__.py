"""Event sequences: clients' events in memory, their CoLES views and padded batches."""
