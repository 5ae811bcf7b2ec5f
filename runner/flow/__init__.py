"""Flow control: how long to wait before trying again, circuit breakers, (later) limits.

Pure code with injected randomness and clocks; the loops that wait live elsewhere. What
must hold: every retry in headwater (a task attempt, a component restart, a source
reconnect, a Kafka write given up on) waits by one ``Backoff`` schedule.
"""
