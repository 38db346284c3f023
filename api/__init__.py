"""FastAPI service and dashboard."""
