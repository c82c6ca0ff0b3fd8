"""From our error tree to HTTP: a status code and the CLI's JSON error shape.

422 means the request document broke its schema (or is not JSON); 400 means it fits
the schema but cannot be used (an input error of ours); 404 a name or id that does
not exist; 409 a refusal in the resource's present state (not empty, protected,
running); 503 a service that did not answer, like the CLI's exit code 3.

Every error response is ``{"error": {"type", "message", "remedy"}}``, the same
document ``backupctl --json`` prints, so a client handles both alike. Messages come
from errors.py and never carry secrets; a foreign exception's message might, so for
those only the class name is returned (the traceback goes to the server log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from backup_tasks.api.operations import operations
from backup_tasks.api.schemas import ErrorResponse
from backup_tasks.errors import (BackupError, ConfigError, DeleteRefused, InputError, KeyMissing, ObjectLocked, RestoreRefused,
                                 ServiceUnavailable, StorageError, TierUnavailable, VerificationFailed)

log = logging.getLogger("backup_tasks.api")


class NotFound(InputError):
    """The target, backup or run named in the request does not exist."""


class Conflict(InputError):
    """The request cannot be done in the resource's present state (a running or deleted backup)."""


class DestinationRefused(InputError):
    """A restore destination outside the configured restore roots, or with '..' in it."""


#: first match wins, so subclasses come before their bases
STATUS = (
    (NotFound, 404),
    (Conflict, 409),
    (RestoreRefused, 409),
    (DeleteRefused, 409),
    (InputError, 400),          # well-formed but unusable (a cursor we never issued, a destination outside the roots)
    (ConfigError, 500),
    (KeyMissing, 409),          # this server lacks the identity: a set-up problem the caller can name, not a bug
    (VerificationFailed, 409),  # e.g. a restore refused because the stored backup fails its checks
    (ObjectLocked, 409),
    (ServiceUnavailable, 503),
    (TierUnavailable, 503),
    (StorageError, 502),
    (BackupError, 500),
)

#: declared on every route, so the OpenAPI schema tells clients the error shape
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 500, 502, 503)}


def status_for(exc: BackupError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def error_response(status: int, type_: str, message: str, remedy: str = "", *, details: list | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"type": type_, "message": message, "remedy": remedy}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BackupError, _backup_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(AnswerUnexpected)


class AnswerUnexpected:
    """Answer an unexpected exception here, without re-raising it, so the connection stays usable.

    Starlette's outermost handler re-raises after sending the 500, and uvicorn then
    closes the connection: a client's next request on that keep-alive connection is
    reset, so one bug fails two calls. Installed inside the guard, which audits the 500.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # half a response is out: only closing the connection can tell the client
                raise
            response = await _unexpected(Request(scope), exc)
            await response(scope, receive, send)


async def _backup_error(request: Request, exc: BackupError) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return error_response(status, type(exc).__name__, exc.message, exc.remedy)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
               for e in exc.errors()]
    if any(d["type"] == "json_invalid" for d in details):
        message, remedy = "the request body is not valid JSON", "send a JSON object with Content-Type: application/json"
    else:
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details) or "the request is invalid"
        remedy = "see the request schema at /openapi.json (or /docs)"
    return error_response(422, "InputError", message, remedy, details=details)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI's "error parsing the body": bytes that are not even text
        return error_response(422, "InputError", "the request body is not valid JSON",
                              "send a UTF-8 JSON object with Content-Type: application/json")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several routes
        headers["Allow"] = ", ".join(_methods(request))
    remedy = {404: "see /docs for the API's paths", 405: "see /docs for the methods this path accepts"}.get(exc.status_code, "")
    return error_response(exc.status_code, "HTTPError", str(exc.detail), remedy, headers=headers or None)


def _methods(request: Request) -> list[str]:
    """The methods the schema has for this path (FastAPI's GET routes do not answer HEAD)."""
    return sorted({method for method, regex, _ in operations(request.app.openapi()) if regex.fullmatch(request.url.path)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    mapped = unreachable(exc)
    if mapped is not None:
        return await _backup_error(request, mapped)
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalError", f"internal error ({type(exc).__name__})",
                          "this is a bug; the server log has the traceback")


def unreachable(exc: BaseException) -> ServiceUnavailable | None:
    """Library errors that mean a service is down become 503, as they are exit code 3 in the CLI."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError as SQLOperationalError

    if isinstance(exc, (KombuOperationalError, RedisConnectionError, ConnectionError)):
        return ServiceUnavailable(f"cannot reach the broker ({type(exc).__name__})", "is Redis up? check broker_url")
    if isinstance(exc, SQLOperationalError):
        return ServiceUnavailable("the catalog database is unreachable", "check catalog_url and the database server")
    return None
