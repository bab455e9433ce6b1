"""prep's errors on the command line: one line on stderr and the error's exit code."""

from __future__ import annotations

import errno

import click
from click.exceptions import NoArgsIsHelpError

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


class OneLineUsage(click.UsageError):
    """A usage mistake (an unknown option, a bad value, a missing argument) as one line naming
    where the help is, exit code 2, rather than click's usage block."""

    def __init__(self, message: str, ctx: click.Context | None, path: str | None = None):
        super().__init__(message, ctx)
        self.path = ctx.command_path if ctx is not None else path

    def show(self, file=None) -> None:
        where = f" (see '{self.path} --help')" if self.path else ""
        click.echo(f"error: {self.message.rstrip('.').replace('. (', ' (')}{where}", err=True)


def _one_line(exc: click.UsageError, path: str | None = None) -> click.UsageError:
    if isinstance(exc, (OneLineUsage, NoArgsIsHelpError)):  # the help asked for by giving nothing stays
        return exc
    return OneLineUsage(exc.format_message(), exc.ctx, path)


class _OneLineUsage:
    """Usage mistakes found while parsing (or by a command itself) become `OneLineUsage`."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # some parse errors carry no context: the path is built here
            raise _one_line(exc, f"{parent.command_path} {info_name}" if parent is not None else info_name) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


class StageCommand(_OneLineUsage, click.Command):
    """A command whose prep errors are one line; whose full-disk, quota and permission errors are
    one line naming the file (or the output folder when the system names none), exit code 2; what
    was committed before stays, so the same command resumes once the cause is fixed. Given none
    of the arguments it needs, it shows its help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "no_args_is_help" not in kwargs:
            self.no_args_is_help = any(isinstance(p, click.Argument) and p.required for p in self.params)

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


class StageGroup(_OneLineUsage, click.Group):
    command_class = StageCommand
