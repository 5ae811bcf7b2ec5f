"""What task code imports: ``from headwater.runner.tasks import TaskContext, Retriable``
(also ``from headwater import Retriable``).

The executor lives in ``headwater.runner.executor``; this name stays for task authors.
"""

from headwater.runner.errors import Permanent as Permanent
from headwater.runner.errors import Retriable as Retriable
from headwater.runner.executor import TaskContext as TaskContext
