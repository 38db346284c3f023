"""The Celery adapter of the anneal use case: app, tasks, enqueuer and the worker command. The only code importing celery or kombu."""
