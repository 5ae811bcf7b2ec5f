"""The ``headwater`` command: ``validate``, ``dev`` (every component in one process) and
``publish``. With the engine, the only part of ``runner`` that imports ``bridges``.
"""

from headwater.runner.cli.main import main as main
