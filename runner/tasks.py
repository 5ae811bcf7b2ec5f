"""What task code imports: ``from headwater.runner.tasks import TaskContext``.

The executor lives in ``headwater.runner.executor``; this name stays for task authors.
"""

from headwater.runner.executor import TaskContext as TaskContext
