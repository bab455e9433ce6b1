"""`prep` command line: thin click commands (one module each) that build a stage config and call
the driver. Heavy imports (torch, diffusers) happen when a command runs, not at --help."""

from __future__ import annotations

import click

from prep import __version__
from prep.cli.errors import StageGroup
from prep.cli.latents import latents
from prep.cli.merge import merge
from prep.cli.pipeline import run, slurm
from prep.cli.options import CONTEXT
from prep.cli.tokenize import tokenize
from prep.cli.tools import finalize, index, inspect, status, verify


@click.group(context_settings=CONTEXT, cls=StageGroup)
@click.version_option(__version__, prog_name="prep")
def main():
    """Offline, deterministic, crash-safe preprocessing of training data.

    Every stage writes its outputs under temporary names and a manifest.json last; rerun the
    same command after a crash to resume, and get the same bytes whatever the worker count.
    """


for command in (tokenize, finalize, verify, inspect, index, status, latents, merge, run, slurm):
    main.add_command(command)
