"""The API's request and response bodies (pydantic), i.e. its OpenAPI schema.

Request bodies are strict and closed (``extra="forbid"``, no string-to-bool coercion),
so a typo such as ``{"dryrun": true}`` is a 422 rather than a silently ignored option.
Response models mirror the CLI's ``--json`` documents (README: Exit codes and JSON) and stay open
(``extra="allow"``): a field added there appears here without breaking clients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backup_tasks.records.catalog import Status
from backup_tasks.sources.base import known_kinds

#: target and tier names (config.NAME_RE)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
#: backup ids are ``<target>-<time>-<hex>``; verify jobs append ``.verify-<hex>``
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"

#: incremental and differential are for files and config targets; other kinds answer 400 saying why
BackupType = Literal["full", "incremental", "differential"]
SourceKind = Literal[tuple(known_kinds())]  # type: ignore[valid-type]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    type: str = Field(description="the error class, as in the CLI's JSON errors (InputError, RestoreRefused, ...)")
    message: str = Field(description="what went wrong")
    remedy: str = Field("", description="what to do about it")
    details: list[dict[str, Any]] | None = Field(None, description="per-field problems of a request that failed validation")


class ErrorResponse(BaseModel):
    error: ErrorBody


class BackupRequest(_Request):
    target: str = Field(pattern=NAME_PATTERN, description="a target name from GET /targets", examples=["app-sqlite"])
    type: BackupType = "full"
    rehash: bool = Field(False, description="incremental/differential: read every file and compare hashes, not metadata")


class RunAccepted(_Response):
    id: str = Field(description="the run id: the backup's id in the catalog, in storage and in Flower")
    target: str
    status: str
    stage: str | None = None
    status_url: str


class Location(BaseModel):
    tier: str
    key: str
    size: int


class BackupEntry(_Response):
    id: str
    target: str
    kind: str
    type: str
    status: Status
    created_at: str | None
    finished_at: str | None = None
    size_plain: int | None = None
    size_stored: int | None = None
    locations: list[Location]
    verified_at: str | None = None
    host: str
    duration_seconds: float | None = None
    error: str | None = None


class BackupPage(BaseModel):
    items: list[BackupEntry]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")
    next: str | None = Field(None, description="the next page's URL, or null")


class Verification(BaseModel):
    at: str
    ok: bool
    check: str | None = None
    detail: dict[str, Any] | None = None


class BackupDetail(BackupEntry):
    stage: str
    parent_id: str | None = None
    manifest: dict[str, Any] | None = Field(None, description="the manifest summary recorded in the catalog")
    files: list[dict[str, Any]] | None = Field(None, description="with ?files=true: the tree listing's entries (or, for a "
                                                                   "backup stored before listings, the manifest's file list)")
    verifications: list[Verification]


class Progress(_Response):
    """The latest progress a stage reported (bytes through the stage so far); absent between stages."""

    backup_id: str | None = None
    target: str | None = None
    stage: str | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None


class RunState(_Response):
    id: str
    kind: Literal["backup", "verify"]
    status: str = Field(description="backup: running|uploaded|verified|failed|deleted; verify: queued|running|verified|failed|error")
    stage: str | None = None
    target: str | None = None
    backup_id: str | None = None
    progress: Progress | None = None


class VerifyAccepted(_Response):
    job_id: str
    backup_id: str
    status: Literal["queued"]
    status_url: str


class VerifyResult(_Response):
    backup_id: str
    ok: bool
    status: Literal["verified", "failed"]
    check: str | None = None
    message: str | None = None
    remedy: str | None = None


class RestoreRequest(_Request):
    destination: str = Field(min_length=1, max_length=4096,
                             description="absolute path below one of the server's [api] restore_roots")
    dry_run: bool = False
    force: bool = Field(False, description="replace what is at the destination")
    # at most 10: eleven paths of 4096 bytes still fit the default body limit, so a longer list is a 422, not a 413
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=10,
        description="files/config: restore only these paths (as backed up) and what is below them, through a chain too")
    strip_source_path: bool = Field(False, description="files/config: restore relative to the backed-up paths' common "
                                                       "directory instead of nesting the full path")


class RestoreResult(_Response):
    backup_id: str
    target: str
    kind: str
    destination: str
    dry_run: bool


class Removed(BaseModel):
    tier: str
    key: str


class DeleteResult(BaseModel):
    backup_id: str
    target: str
    status: Literal["deleted"]
    removed: list[Removed] = Field(description="copies removed by this call (empty if it was already deleted)")
    debris: list[dict[str, Any]] = Field(default_factory=list,
                                         description="temp files of this backup's writes that never finished, removed too")


class CleanupRequest(_Request):
    target: str | None = Field(None, pattern=NAME_PATTERN, description="only this target (default: all)")
    dry_run: bool = Field(True, description="only plan; the API defaults to a dry run, the CLI does not")


class CleanupReport(_Response):
    now: str
    dry_run: bool
    targets: list[str]
    keep: int
    remove: int
    decisions: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    debris: list[dict[str, Any]]


class TargetOut(_Response):
    name: str
    kind: str
    host: str
    schedule: str
    storage: list[str]


class Component(BaseModel):
    name: str
    kind: Literal["broker", "result_backend", "catalog", "tier"]
    status: Literal["ok", "unavailable", "embedded"]
    detail: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    components: list[Component]
