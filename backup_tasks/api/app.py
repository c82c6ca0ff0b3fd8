"""The FastAPI application: routes under /api/v1, the guard, error handlers, schema at /openapi.json.

    app = create_app(runtime)          # backupctl api serve runs it with uvicorn

Routes are thin (like tasks.py): they resolve the request's names to 404s, call the
same domain functions the CLI calls (client, verify, restore, deletion, cleanup) with
actor ``api:<token name>``, and shape the result.
"""

from __future__ import annotations

from fastapi import FastAPI, Security
from fastapi.security import HTTPBearer

from backup_tasks import __version__
from backup_tasks.ops import runtime as runtime_mod
from backup_tasks.api import errors
from backup_tasks.api.auth import Guard
from backup_tasks.api.operations import operations
from backup_tasks.api.routes import backups, cleanup, health, restore, runs, targets, verify
from backup_tasks.ops.runtime import Runtime
from backup_tasks.orchestration import config_reload
from backup_tasks.orchestration.celery_app import configure

PREFIX = "/api/v1"
DESCRIPTION = """\
Backups, verification, restore and retention over HTTP, on the same tasks and catalog as `backupctl`.

Every `/api/v1` call needs `Authorization: Bearer <token>`; tokens are configured as hashes in the
`[api]` table with a role: **viewer** (read), **operator** (+ back up, verify), **admin** (+ restore,
delete, cleanup). Each operation's least role is its `x-required-role`. Missing or invalid token: 401;
wrong role: 403. Errors are `{"error": {"type", "message", "remedy"}}`. Every call is audited.
"""

#: only documents the scheme in the schema; auth.Guard does the checking, before the body is read
bearer = HTTPBearer(auto_error=False, description="a token from `backupctl api token`")


def create_app(rt: Runtime) -> FastAPI:
    """The app for ``rt``, which becomes this process's runtime (routing and tasks look it up).

    The targets file ``rt`` came from is followed as workers follow theirs: each request
    sees the file as it is now (targets, tokens, limits), so an edit needs no restart and a
    file that no longer validates leaves the last good one in force. Broker and catalog
    URLs are read once, as in workers.
    """
    runtime_mod.install(rt)
    config_reload.follow(rt.config.file)
    configure(rt.settings)
    app = FastAPI(title="backup-tasks", version=__version__, description=DESCRIPTION, openapi_url="/openapi.json",
                  docs_url="/docs", redoc_url=None)
    for module in (backups, verify, restore, runs, cleanup, targets, health):
        app.include_router(module.router, prefix=PREFIX, dependencies=[Security(bearer)])
    errors.install(app)
    operations(app.openapi())  # every /api/ operation declares its role, or the server does not start
    app.add_middleware(Guard, fastapi_app=app, current=config_reload.fresh)
    return app
