"""The API's operations as its own OpenAPI schema declares them: method, path and least role.

Routes declare their role with :func:`requires`; the guard authorizes against
:func:`operations`, and the error handlers answer 405 with the methods a path really
has. Both read the same table, which lives here so that neither needs the other.
"""

from __future__ import annotations

import re

ROLE_KEY = "x-required-role"


def requires(role: str) -> dict:
    """Route keyword arguments declaring the least role that may call it (shown in the OpenAPI schema)."""
    return {"openapi_extra": {ROLE_KEY: role}}


def operations(schema: dict) -> list[tuple[str, re.Pattern, str]]:
    """(METHOD, path regex, least role) for every operation under /api/.

    ValueError if one declares no role, so a route cannot be added unguarded by mistake.
    """
    table = []
    for path, methods in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        regex = re.compile(re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path)))
        for method, operation in methods.items():
            role = operation.get(ROLE_KEY)
            if role is None:
                raise ValueError(f"{method.upper()} {path} declares no {ROLE_KEY}: add **requires(role) to its route")
            table.append((method.upper(), regex, role))
    return table
