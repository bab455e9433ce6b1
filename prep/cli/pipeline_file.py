"""Pipeline files: a YAML list of stages, each a prep command with the command line's option names
(as `--config` files take them), and a `slurm:` block. Read with line numbers, so an unknown key
is one line naming it and its file:line; each stage becomes the argv of its command.

    slurm: {partition: cpu, time: "04:00:00", cpus-per-task: 16, tasks: 64}
    stages:
      - tokenize: {inputs: [data/*.jsonl], output: out/text, tokenizer: /models/gpt2}
      - index: {outputs: [out/text], seq-length: 4096}

Relative paths (inputs, outputs, tokenizers, templates, model folders) resolve against the YAML's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
import yaml

from prep.cli.options import role_pairs
from prep.errors import PrepError

SLURM_KEYS = {"partition", "account", "time", "mem", "cpus_per_task", "gpus_per_task", "tasks", "extra", "setup", "command",
              "max_array_size"}
ARRAY_STAGES = {"tokenize", "latents"}  # stage-driver commands: a Slurm array, then `prep finalize`
PATH_NAMES = {"inputs", "output", "outputs", "tokenizer", "chat_template", "config", "model", "vae", "text_encoders",
              "captions", "cache_dir"}


class _Lines(dict):
    """A mapping that remembers the line of each key."""

    lines: dict


def _build(node, constructor):
    if isinstance(node, yaml.MappingNode):
        out = _Lines()
        out.lines = {}
        for key, value in node.value:
            name = constructor.construct_object(key, deep=True)
            out[name], out.lines[name] = _build(value, constructor), key.start_mark.line + 1
        out.line = node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, constructor) for item in node.value]
    return constructor.construct_object(node, deep=True)


def load_yaml(path: Path):
    try:
        text = path.read_text()
    except OSError as exc:
        raise PrepError(f"{path}: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PrepError(f"{path}:{mark.line + 1 if mark else '?'}: {getattr(exc, 'problem', None) or exc}") from None
    return _build(node, yaml.SafeLoader(""))


@dataclass
class Stage:
    command: str
    options: dict
    line: int
    argv: list[str] = field(default_factory=list)

    @property
    def array(self) -> bool:
        return self.command in ARRAY_STAGES

    @property
    def output(self) -> Path:
        """The folder this stage writes (its Slurm scripts and logs go under its .prep/slurm)."""
        value = self.options.get("output") or self.options.get("outputs")
        return Path(value[0] if isinstance(value, list) else value)


@dataclass
class Pipeline:
    path: Path
    stages: list[Stage]
    slurm: dict


def _option_names(command: click.Command) -> dict[str, click.Parameter]:
    names = {}
    for param in command.params:
        names[param.name] = param
        for opt in [*param.opts, *param.secondary_opts]:
            names[opt.lstrip("-").replace("-", "_")] = param
    return names


def _resolve(value, base: Path):
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute() and ":" not in value:
        return str(base / value)
    return value


def argv_of(command: click.Command, options: dict, base: Path, where: str) -> list[str]:
    """The command line that runs `command` with `options` (relative paths against `base`)."""
    names = _option_names(command)
    positional, flags = [], []
    for key, value in options.items():
        param = names.get(str(key).replace("-", "_"))
        if param is None or param.name == "config":
            raise PrepError(f"{where}:{options.lines[key]}: unknown option {key!r} for prep {command.name}")
        if param.name in PATH_NAMES or isinstance(param.type, click.Path):
            value = _resolve(value, base)
        if isinstance(param, click.Argument):
            positional += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        option = max(param.opts, key=len)
        if getattr(param, "is_flag", False) and param.secondary_opts:
            flags.append(option if value else max(param.secondary_opts, key=len))
        elif getattr(param, "is_flag", False):
            if value:
                flags.append(option)
        elif getattr(param, "multiple", False):
            for item in value if isinstance(value, list) else [value]:
                flags += [option, str(item)]
        elif isinstance(value, dict):  # --columns context=input,...
            flags += [option, role_pairs(value)]
        else:
            flags += [option, str(value)]
    return [*positional, *flags]


def load(path: str | Path, commands: dict[str, click.Command]) -> Pipeline:
    """Read and check a pipeline file; every stage's argv is built (so its option names are checked)."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise PrepError(f"{path}: expected a mapping with `stages:` (and `slurm:`)")
    for key in data:
        if key not in ("stages", "slurm"):
            raise PrepError(f"{path}:{data.lines[key]}: unknown key {key!r} (a pipeline has `stages:` and `slurm:`)")
    slurm = data.get("slurm") or _Lines()
    if not isinstance(slurm, dict):
        raise PrepError(f"{path}:{data.lines['slurm']}: `slurm:` is a mapping")
    for key in slurm:
        if str(key).replace("-", "_") not in SLURM_KEYS:
            raise PrepError(f"{path}:{slurm.lines[key]}: unknown slurm key {key!r} "
                            f"(one of {', '.join(sorted(k.replace('_', '-') for k in SLURM_KEYS))})")
    stages = []
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise PrepError(f"{path}: `stages:` is a list of stages, such as `- tokenize: {{...}}`")
    for item in raw:
        if not isinstance(item, dict) or len(item) != 1:
            raise PrepError(f"{path}:{getattr(item, 'line', '?')}: a stage is one command name and its options")
        name, options = next(iter(item.items()))
        if name not in commands:
            raise PrepError(f"{path}:{item.lines[name]}: unknown stage {name!r} (one of {', '.join(sorted(commands))})")
        if not isinstance(options, dict):
            options = _Lines()
        if not hasattr(options, "lines"):
            options.lines = {}
        stage = Stage(name, dict(options), item.lines[name])
        stage.argv = argv_of(commands[name], options, path.parent.resolve(), str(path))
        stage.options = {k.replace("-", "_"): _resolve(v, path.parent.resolve()) if k.replace("-", "_") in PATH_NAMES else v
                         for k, v in options.items()}
        if "output" not in stage.options and "outputs" not in stage.options:
            raise PrepError(f"{path}:{stage.line}: the {name} stage names no output")
        stages.append(stage)
    return Pipeline(path, stages, {str(k).replace("-", "_"): v for k, v in slurm.items()})
