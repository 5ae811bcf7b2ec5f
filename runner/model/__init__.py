"""The pipeline model: what a pipeline file becomes, how files are loaded and checked,
and which triggers an event matches. Pure, no I/O but reading pipeline files.

What must hold: a ``Pipeline`` exists only once its file validated (schema, DAG, durations,
no credential literals); every problem is reported as ``file:line: field: message``;
matching answers exactly what testing every trigger would (``TriggerIndex``).
Depends on the base layer only (``errors``, ``durations``, ``envelope``, ``flow``).
"""
