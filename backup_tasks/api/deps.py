"""What a route takes from the request: the runtime, the caller's token and its audit actor."""

from __future__ import annotations

from fastapi import Request

from backup_tasks.api.auth import actor
from backup_tasks.config.api import ApiToken
from backup_tasks.ops.runtime import Runtime
from backup_tasks.orchestration import config_reload


def runtime(request: Request) -> Runtime:
    """The runtime of the targets file as it is now: a target added since the server started is known."""
    return config_reload.fresh()


def caller(request: Request) -> ApiToken:
    """Set by auth.Guard; a route is never reached without it."""
    return request.state.token


def actor_of(request: Request) -> str:
    return actor(caller(request))
