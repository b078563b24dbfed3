"""Task registry. Importing this package registers the built-in tasks."""
from tuneforge.tasks import (classification, multilabel, regression, sft, speech_recognition,  # noqa: F401
                             token_classification)
from tuneforge.tasks.base import TASKS, Built, Task, create_task, task_from_saved

__all__ = ["TASKS", "Built", "Task", "create_task", "task_from_saved"]
