"""Who is calling and may they: bearer tokens, roles, body size, and an audit entry per call.

One ASGI middleware does all four, in the order a careful server must:

1. **authenticate** the bearer token (401, ``WWW-Authenticate: Bearer``) ...
2. ... and **authorize** its role against the matched route's ``x-required-role`` (403),
   both before the body is read or parsed, so an anonymous or under-privileged caller
   learns nothing from validation errors;
3. read the body up to ``max_body_bytes`` (413 beyond, whether or not Content-Length
   says so), then hand the buffered body to the route;
4. **audit** the call: action ``api``, actor ``api:<token name>`` (``api:anonymous``
   for a 401, rate-limited by anonymous_audit.py), outcome ``ok``/``refused``/``failed``
   by status, method, path, status.

FastAPI's own dependencies run only after it parsed the body, which is why this is a
middleware and not a ``Depends``. It finds the operation in the app's own OpenAPI
schema (paths, methods and ``x-required-role``: public and stable, unlike the router's
internals), and ``api.operations`` refuses to build a table in which an /api/ operation
declares no role, so a route cannot be added unguarded by mistake. Tokens are compared as sha256 hashes in constant time
(config/api.py says why sha256 suffices); the token itself is never stored or logged.
"""

from __future__ import annotations

import hmac
import logging

from anyio import to_thread

from backup_tasks.records import audit
from backup_tasks.config.api import ApiToken, hash_token
from backup_tasks.api.anonymous_audit import AnonymousAudit
from backup_tasks.api.errors import error_response, status_for, unreachable
from backup_tasks.api.operations import operations
from backup_tasks.errors import BackupError

log = logging.getLogger("backup_tasks.api")

ANONYMOUS = "api:anonymous"
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
METHOD_NOT_ALLOWED = "method-not-allowed"


def actor(token: ApiToken | None) -> str:
    return f"api:{token.name}" if token else ANONYMOUS


def authenticate(tokens: dict[str, ApiToken], header: str | None) -> ApiToken | None:
    """The token whose hash matches ``Authorization: Bearer <token>``, or None."""
    scheme, _, presented = (header or "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    digest = hash_token(presented).encode()
    found = None
    for token in tokens.values():  # every hash is compared: the time taken says nothing about which matched
        if hmac.compare_digest(digest, token.hash.encode()):
            found = token
    return found


class Guard:
    """ASGI middleware for everything under /api/ (the schema and /docs stay public)."""

    def __init__(self, app, *, fastapi_app, current) -> None:
        """``current()`` is the runtime in force: tokens and limits are read from it on every call,
        so a token removed from the targets file stops working without a restart."""
        self.app = app
        self.fastapi_app = fastapi_app
        self.current = current
        self._operations: list | None = None
        self.anonymous = AnonymousAudit()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rt = await to_thread.run_sync(self.current)  # a stat, or a reload after an edit: not on the event loop
        max_body = rt.config.api.max_body_bytes
        token = authenticate(rt.config.api.tokens, headers.get("authorization"))
        call = {"method": scope["method"], "path": scope["path"]}
        if scope.get("query_string"):
            call["query"] = scope["query_string"].decode("latin-1")[:200]
        required, params = self._operation(scope)
        backup_id = params.get("backup_id")
        if token is None:
            missing = not headers.get("authorization")
            response = error_response(401, "Unauthorized", "missing bearer token" if missing else "invalid bearer token",
                                      "send Authorization: Bearer <token> (backupctl api token makes one)",
                                      headers={"WWW-Authenticate": "Bearer"})
            sampled = self.anonymous.admit()
            if sampled is not None:  # a flood of them is counted, not written row by row
                await self._audit(rt, None, 401, {**call, **sampled}, backup_id)
            return await response(scope, receive, send)
        if required is None:  # fail closed: nothing outside the schema runs under /api/, not even a hidden route
            await self._audit(rt, token, 404, call, backup_id)
            return await error_response(404, "HTTPError", "Not Found", "see /docs for the API's paths")(scope, receive, send)
        if required != METHOD_NOT_ALLOWED and not token.allows(required):
            response = error_response(403, "Forbidden", f"token '{token.name}' has role '{token.role}'; this needs '{required}'",
                                      "use a token with that role, or ask an admin to grant one")
            await self._audit(rt, token, 403, call, backup_id)
            return await response(scope, receive, send)
        body = b""
        if scope["method"] in BODY_METHODS:
            body = await self._read_body(receive, headers, max_body)
            if body is None:
                response = error_response(413, "PayloadTooLarge", f"request body larger than {max_body} bytes",
                                          "send a smaller JSON document; the limit is [api] max_body_bytes")
                await self._audit(rt, token, 413, call, backup_id)
                return await response(scope, receive, send)
        scope.setdefault("state", {})["token"] = token
        status = {"code": 500, "audited": False}

        async def replay():
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not status["audited"]:
                # Written before the response's last byte leaves: a caller that got its answer
                # finds the call in the audit log, never a moment later.
                status["audited"] = True
                await self._audit(rt, token, status["code"], call, backup_id)
            await send(message)

        try:
            await self.app(scope, replay if scope["method"] in BODY_METHODS else receive, capture)
        except Exception as exc:
            # Answered by the outermost handler (errors._unexpected), after this guard: audit the code it sends.
            mapped = unreachable(exc)
            status["code"] = status_for(mapped) if mapped is not None else 500
            raise
        finally:
            if not status["audited"]:  # the app raised or the client went away before the end
                await self._audit(rt, token, status["code"], call, backup_id)

    def _operation(self, scope) -> tuple[str | None, dict]:
        """The least role for this method and path, and the path's parameters.

        METHOD_NOT_ALLOWED for a known path with another method (the router answers 405
        without running anything); None for a path the schema does not have.
        """
        if self._operations is None:
            self._operations = operations(self.fastapi_app.openapi())
        method = scope["method"]
        path_known = False
        for op_method, regex, role in self._operations:
            found = regex.fullmatch(scope["path"])
            if found and op_method == method:
                return role, found.groupdict()
            path_known = path_known or found is not None
        return (METHOD_NOT_ALLOWED if path_known else None), {}

    async def _read_body(self, receive, headers, max_body: int) -> bytes | None:
        """The whole body, or None as soon as it is over the limit (nothing more is read)."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _audit(self, rt, token: ApiToken | None, code: int, call: dict, backup_id: str | None) -> None:
        outcome = audit.OK if code < 400 else audit.REFUSED if code < 500 else audit.FAILED
        detail = {**call, "status": code}
        if token is not None:
            detail["role"] = token.role
        await to_thread.run_sync(self._record, rt, actor(token), outcome, backup_id, detail)

    def _record(self, rt, who: str, outcome: str, backup_id: str | None, detail: dict) -> None:
        try:
            catalog = rt.catalog
        except BackupError as exc:  # the catalog is down: the call's own response says so; never fail on the audit
            log.error("audit of %s %s by %s not written: %s", detail["method"], detail["path"], who, exc)
            return
        audit.record(catalog, "api", actor=who, outcome=outcome, backup_id=backup_id, detail=detail)
