"""What ``bench run --task`` evaluates: one class per task, registered in ``benchmark.registry.TASKS``.

The runner (``benchmark/runner.py``) builds the model, trains it or loads its cached
checkpoint, then hands a :class:`~benchmark.tasks.base.TaskContext` to the task's
``evaluate``; the task returns a :class:`~benchmark.tasks.base.TaskEvaluation` (metrics,
per-query arrays, provenance) and the runner writes the result file.
"""
