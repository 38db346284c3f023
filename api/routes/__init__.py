"""HTTP routes, one module per resource: anneal jobs, runs, models, health."""
