"""The models ``benchmarks/accuracy.py`` measures, one module per model: each builds a
:class:`~accuracy_tasks.task.Task` (float module, calibration inputs, held-out evaluation)."""

from .task import Metric, Task, assert_disjoint

__all__ = ["Metric", "Task", "assert_disjoint"]
