"""Fault tests: real ``headwater dev`` processes against real Kafka, fed what a careless or
hostile user would send. Each test says what was lost, doubled or stuck: counts of
completions, DLQ records with their reasons, whether the process is still alive. They use
the ``headwater_dev`` fixture of ``tests/conftest.py``."""
