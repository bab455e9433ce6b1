"""The Jinja environment chat templates are written for, without importing transformers.

Chat templates target the environment transformers renders them in (`apply_chat_template`):
an immutable sandbox (templates from a hub are untrusted code), `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that keeps non-ASCII text and
HTML characters as they are, and the globals `raise_exception`, `strftime_now`, `dict` and
`namespace`. Importing transformers costs 1.5-2.5 s per run on a small machine, more than
rendering a 60 MB chat corpus's templates takes; so prep builds that environment itself, and
imports transformers only for templates with `{% generation %}` blocks, whose spans come from
transformers' own tracker. `tests/test_sft.py` checks the ids against `apply_chat_template`.

Lookups of the form `message.role` on plain dicts (all a JSON record holds), `loop.first` and
`text.strip` skip the sandbox's per-access checks (about 20 us each): on a dict such a name can
only give an item, which is what the sandbox returns too, and the sandbox passes loop
attributes and str methods through unchanged; names of dict methods (`items`, `get`, ...) and
`str.format` still take the checked path.
"""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

_DICT_ATTRIBUTES = frozenset(dir(dict))
# What the sandbox lets through unchanged: public str methods but the formatting ones (which it
# wraps), and the loop variable's attributes.
_PLAIN = {str: frozenset(n for n in dir(str) if not n.startswith("_")) - {"format", "format_map"},
          LoopContext: frozenset(n for n in dir(LoopContext) if not n.startswith("_"))}


class _Environment(ImmutableSandboxedEnvironment):
    def getattr(self, obj, attribute):
        kind = type(obj)
        if kind is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        elif kind in _PLAIN and attribute in _PLAIN[kind]:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, which could reach interpreter internals."""

    def __init__(*args, **kwargs):  # Namespace's own signature, so namespace(self=...) works
        self, values = args[0], dict(*args[1:], **kwargs)
        for name in values:
            _Namespace._refuse(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name, value):
        _Namespace._refuse(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _refuse(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates can't set underscore names on a namespace ({name!r})")


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(template: str) -> jinja2.Template:
    environment = _Environment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                               namespace=_Namespace)
    return environment.from_string(template)
