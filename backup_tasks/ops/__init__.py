"""The use cases: back up, read back, verify, restore, drill, clean up, delete, watch, report, rebuild.

Each takes a Runtime (the loaded config and its handles) and works through the layers
below it; none knows about Celery, the CLI or HTTP."""
