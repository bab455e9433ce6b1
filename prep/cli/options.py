"""Options shared by the commands: --config FILE.yaml, sizes like 64M, the context settings."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from prep.tokenize.config import parse_size

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def role_pairs(mapping: dict) -> str:
    """{context: input, answer: output} as --columns takes it: `context=input,answer=output`."""
    return ",".join(f"{k}={v}" for k, v in mapping.items())


def load_config_file(ctx: click.Context, param, value):
    """--config FILE.yaml: its keys (option names, - or _) become defaults; the command line wins."""
    if value:
        try:
            data = yaml.safe_load(Path(value).read_text()) or {}
        except OSError as exc:
            raise click.BadParameter(f"{value}: {exc.strerror}") from None
        except yaml.YAMLError as exc:  # one line: file:line:column: the problem
            mark = getattr(exc, "problem_mark", None)
            where = f"{value}:{mark.line + 1}:{mark.column + 1}" if mark else value
            raise click.BadParameter(f"{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(data, dict):
            raise click.BadParameter(f"{value}: expected a mapping of option names to values")
        names = {opt.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for opt in p.opts}
        unknown = [k for k in data if k.replace("-", "_") not in names]
        if unknown:
            raise click.BadParameter(f"{value}: unknown option(s) {', '.join(unknown)}")
        multiple = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
        params = {p.name: p for p in ctx.command.params}
        for key, v in list(data.items()):
            param = params[names[key.replace("-", "_")]]
            if isinstance(v, dict):  # `columns: {context: input}` means --columns context=input, as in a pipeline file
                data[key] = role_pairs(v)
            elif isinstance(v, list) and param.name not in multiple and getattr(param, "nargs", 1) == 1:
                raise click.BadParameter(f"{value}: {key}: expected one value, got a list")
        defaults = {names[k.replace("-", "_")]: v for k, v in data.items()}
        # `text-key: title` means [title], as `--text-key title` does
        defaults = {k: [v] if k in multiple and not isinstance(v, list) else v for k, v in defaults.items()}
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def size(ctx, param, value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def run_options(command):
    """--task and --progress, which every stage command takes: the driver reads them."""
    command = click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")(command)
    return click.option("--task", default=None,
                        help="Run only array task I of N (I/N, 0-based). Default: from SLURM_ARRAY_TASK_ID/COUNT.")(command)
