"""The errors a user can cause. prep's own types, free of any CLI library: the command line
(prep.cli.errors) prints each as one line and exits with its `exit_code`, never a traceback."""

from __future__ import annotations


class PrepError(Exception):
    """A one-line user-facing error; exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message

    def one_line(self) -> str:
        # One line, whatever a library put in the reason (pyarrow's messages hold newlines).
        return " ".join(self.message.split())


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


class VerifyFailed(PrepError):
    """`prep verify` found damage (each problem already printed on its own line): exit code 1,
    apart from the usage errors' 2."""

    exit_code = 1


class Interrupted(PrepError):
    """Ctrl-C: the shell's exit code for SIGINT, and how to go on."""

    exit_code = 130

    def __init__(self, message: str = "interrupted; what was committed is kept: rerun the same command to resume"):
        super().__init__(message)


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
            self.examples.append(error.message)
        category = reason.split(" (")[0]
        self.counts[category] = self.counts.get(category, 0) + 1
