"""The anneal job use case: resolve a request, merge, publish, evaluate. Knows neither HTTP nor Celery."""
