"""Runs: the run state machine, batching windows, the run table that applies control
messages, its changelog and local store, standby copies, timers and the completion event.

Everything here but ``changelog.restore``, ``standby``, ``timers`` and the store's RocksDB
backend is pure (clock and randomness are injected; the run table's store has an in-memory
backend): unit-tested without Kafka. What must hold: a run is a fold over its control
messages; applying the same messages again causes nothing twice; one completion per run.
Depends on ``model``, ``log`` and the base layer.
"""
