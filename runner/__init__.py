"""The core: pipelines, trigger matching, the run state machine, dispatch, workers, CLI.

``headwater`` is a namespace package; this folder installs as ``headwater.runner``.
"""

__version__ = "0.1.0"
