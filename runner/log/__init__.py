"""The central log: Kafka clients, topics, the wire format of every record headwater
writes (control messages, task requests, DLQ entries), and one topic reader.

What must hold: producers are idempotent with ``acks=all`` and every write's outcome is
observed (``all_acknowledged``/``unacknowledged``); consumers never auto-commit; a
record that cannot be decoded raises ``BadMessage`` naming what is wrong, never anything
else. Depends on the base layer only (``errors``, ``settings``, ``envelope``).
"""
