"""The errors a user can cause: printed as one line, exit code 2, never a traceback."""

from __future__ import annotations

import errno

import click


class PrepError(click.ClickException):
    """A one-line user-facing error; exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        # One line, whatever a library put in the reason (pyarrow's messages hold newlines).
        click.echo(f"error: {' '.join(self.format_message().split())}", err=True)


class BadRecord(PrepError):
    """A record that can't be used: `path:line: reason` (line None for file-level problems)."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(self.where + ": " + reason)

    @property
    def where(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def __reduce__(self):  # crosses process boundaries intact
        return (BadRecord, (self.path, self.line, self.reason))


class Rejects:
    """Bad records: raise the first (default), or count each reason and keep a few examples."""

    def __init__(self, skip: bool, max_examples: int = 5):
        self.skip = skip
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, path, line, reason: str) -> None:
        """`line` is an int, None, or a thunk (line numbers can be costly to find)."""
        if not self.skip or len(self.examples) < self.max_examples:
            line = line() if callable(line) else line
            error = BadRecord(path, line, reason)
            if not self.skip:
                raise error
            self.examples.append(str(error.format_message()))
        category = reason.split(" (")[0]
        self.counts[category] = self.counts.get(category, 0) + 1


# What the machine, not prep, refuses: a full disk, a quota, a read-only or forbidden output.
_ENVIRONMENT = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some quota", errno.EROFS: "use a writable folder",
                errno.EACCES: "fix the permissions", errno.EPERM: "fix the permissions"}


class StageCommand(click.Command):
    """A command whose full-disk, quota and permission errors are one line naming the file (or
    the output folder when the system names none), exit code 2; what was committed before stays,
    so the same command resumes once the cause is fixed."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT:
                raise
            where = exc.filename or ctx.params.get("output") or ctx.params.get("outputs") or "the output"
            raise PrepError(f"{where}: {exc.strerror}; {_ENVIRONMENT[exc.errno]} and rerun the same command: "
                            "it resumes") from None


class Interrupted(PrepError):
    """Ctrl-C: the shell's exit code for SIGINT, and how to go on."""

    exit_code = 130

    def __init__(self):
        super().__init__("interrupted; what was committed is kept: rerun the same command to resume")


class StageGroup(click.Group):
    command_class = StageCommand
