"""HTTP routes, one module per resource: anneal jobs, runs, models, curves, policies, grids, research tables, the dashboard's extra reads, health."""
