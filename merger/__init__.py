"""Streaming safetensors merge engine, and the Celery app and tasks that run it."""
