"""Every error backup-tasks raises on purpose, with what to do about it.

    BackupError                      exit 1 unless a subclass says otherwise
    ├── ConfigError                  exit 2  the targets file or an override is wrong
    ├── InputError                   exit 2  a command's arguments are wrong (unknown target, id ...)
    │   ├── RestoreRefused           exit 2  restoring would overwrite data without --force
    │   └── DeleteRefused            exit 2  deleting would remove a backup retention protects
    ├── TransientError               retried with backoff by the task layer
    │   └── ServiceUnavailable       exit 3  broker, catalog or storage cannot be reached
    └── PermanentError               fail fast and alert
        ├── SourceError              the dump of a target failed
        ├── StagingFull              the staging directory's disk is full
        ├── DeadlineExceeded         a database tool ran past its deadline and was stopped
        ├── StorageError             a tier refused an operation
        │   ├── ObjectNotFound
        │   ├── ObjectLocked         Object Lock forbids deleting it before its retain-until
        │   └── TierUnavailable      a tier refused to write (mount missing, too little free space)
        ├── KeyMissing               no identity for the key ids an artifact was encrypted to
        ├── VerificationFailed       a stored backup is not what its manifest says
        ├── DrillFailed              a restore drill failed at a named step
        └── UnexpectedError          an exception not ours (a bug, a library's own) at a task's boundary

A message says what failed; ``remedy`` says what to do. Neither ever carries a secret:
callers pass names and references, never resolved credentials, and both are redacted
when the error is made (redaction.py), because a message may quote a tool's stderr.
A traceback is shown only for errors outside this tree, because those are bugs.
"""

from __future__ import annotations

from backup_tasks.redaction import redact


class BackupError(Exception):
    """Root of every expected failure; carries a remedy and the CLI exit code."""

    exit_code = 1

    def __init__(self, message: str, remedy: str = "") -> None:
        message, remedy = redact(message), redact(remedy)
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message} ({self.remedy})" if self.remedy else self.message

    def __reduce__(self):
        # Celery pickles/JSON-encodes exceptions through the result backend; keep both parts.
        return (self.__class__, (self.message, self.remedy))

    def as_dict(self) -> dict:
        return {"type": type(self).__name__, "message": self.message, "remedy": self.remedy}


class ConfigError(BackupError):
    """The configuration is invalid; names the file, the target (or section) and the field."""

    exit_code = 2

    def __init__(self, message: str, remedy: str = "", *, file: str = "", where: str = "", field: str = "") -> None:
        self.file, self.where, self.field = file, where, field
        located = ", ".join(p for p in (file, where, f"field '{field}'" if field else "") if p)
        super().__init__(f"{located}: {message}" if located else message, remedy)

    def __reduce__(self):
        return (_rebuild, (self.__class__, self.message, self.remedy))


class InputError(BackupError):
    """A command was given something that does not exist or does not fit."""

    exit_code = 2


class RestoreRefused(InputError):
    """A restore would overwrite existing data; nothing was written."""


class DeleteRefused(InputError):
    """Deleting this backup would remove one that retention protects; nothing was deleted."""


class TransientError(BackupError):
    """Worth retrying: the same call may succeed later."""


class ServiceUnavailable(TransientError):
    """A required service (broker, catalog database, storage endpoint) did not answer."""

    exit_code = 3


class PermanentError(BackupError):
    """Retrying will not help; the run fails and an alert goes out."""


class SourceError(PermanentError):
    """The source could not be read consistently."""


class StagingFull(PermanentError):
    """The staging directory's filesystem ran out of space (or quota) while a stage wrote there."""


class DeadlineExceeded(PermanentError):
    """A database tool ran past its deadline and was killed; a drill counts this as its time-out."""


class StorageError(PermanentError):
    """A storage tier refused or failed an operation."""


class ObjectNotFound(StorageError):
    """The key is not in the tier."""


class ObjectLocked(StorageError):
    """The object is under S3 Object Lock and may not be deleted yet; retention waits for it."""


class TierUnavailable(StorageError):
    """A tier is not fit to write to (an external mount is missing, or free space is below the threshold)."""


class KeyMissing(PermanentError):
    """Decryption needs an identity that this host does not hold: a set-up problem, not a bad backup."""

    exit_code = 2


class VerificationFailed(PermanentError):
    """A named check failed on a stored backup; the backup must not be trusted."""

    def __init__(self, message: str, remedy: str = "", *, check: str = "") -> None:
        super().__init__(message, remedy)
        self.check = check

    def __reduce__(self):
        return (_rebuild_check, (self.__class__, self.message, self.remedy, self.check))


class UnexpectedError(PermanentError):
    """Stands in, at a Celery task's boundary, for an exception that is not a BackupError.

    Such an exception was not redacted when it was made, and Celery stores whatever a task
    raises in the result backend; this one carries its type name and its redacted message
    instead. Permanent: a bug does not go away by retrying.
    """


class DrillFailed(PermanentError):
    """A restore drill failed at ``step`` (select, connect or point and wal, restore, compare, checks, timeout, cleanup).

    The drill records it and emits it as an event; it is a result of the drill, so
    ``run_drill`` returns rather than raises it.
    """

    def __init__(self, message: str, remedy: str = "", *, step: str = "") -> None:
        super().__init__(message, remedy)
        self.step = step

    def __reduce__(self):
        return (_rebuild_step, (self.__class__, self.message, self.remedy, self.step))


def _rebuild(cls, message, remedy):
    err = cls.__new__(cls)
    BackupError.__init__(err, message, remedy)
    err.file = err.where = err.field = ""
    return err


def _rebuild_check(cls, message, remedy, check):
    return cls(message, remedy, check=check)


def _rebuild_step(cls, message, remedy, step):
    return cls(message, remedy, step=step)
