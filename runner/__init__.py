"""The core: pipelines, trigger matching, the run state machine, dispatch, workers, CLI.

``headwater`` is a namespace package; this folder installs as ``headwater.runner``.
Layers, lowest first (``tests/unit/test_layers.py`` checks the rule):

- base: ``errors``, ``durations``, ``secrets``, ``settings``, ``envelope`` and ``flow/``;
- ``model/`` (pipeline files), ``log/`` (Kafka and wire formats), then ``runs/`` (the
  run table) and ``observe/`` (hooks), then ``executor`` (running one task);
- the processing loops: ``router``, ``control``, ``worker``, ``supervise``;
- ``engine`` (one process's components) and ``cli/``: the only modules that import
  ``headwater.bridges``.
"""

__version__ = "0.1.0"
