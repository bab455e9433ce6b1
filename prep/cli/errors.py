"""prep's errors on the command line: one line on stderr and the error's exit code."""

from __future__ import annotations

import errno

import click

from prep.errors import Interrupted, PrepError

# What the machine, not prep, refuses: a full disk, a quota, a read-only or forbidden output.
_ENVIRONMENT = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some quota", errno.EROFS: "use a writable folder",
                errno.EACCES: "fix the permissions", errno.EPERM: "fix the permissions"}


class OneLine(click.ClickException):
    """A PrepError as click shows it: `error: ...` on one line, the error's exit code."""

    def __init__(self, error: PrepError):
        super().__init__(error.message)
        self.error, self.exit_code = error, error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.error.one_line()}", err=True)


class StageCommand(click.Command):
    """A command whose prep errors are one line; whose full-disk, quota and permission errors are
    one line naming the file (or the output folder when the system names none), exit code 2; what
    was committed before stays, so the same command resumes once the cause is fixed."""

    def invoke(self, ctx: click.Context):
        try:
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
        except PrepError as exc:
            raise OneLine(exc) from None


class StageGroup(click.Group):
    command_class = StageCommand
