"""The HTTP API (FastAPI) for applications and operators: ``backupctl api serve``.

This package's ``__init__`` imports nothing, so ``backup_tasks.config`` can parse the
``[api]`` table (config/api.py) on hosts that never install or start the server.
"""
