"""Command-line options that override a config field take their help, key and default from the
field (one source, as Hugging Face's ``HfArgumentParser`` derives arguments from dataclass fields).

Such an option defaults to ``None`` ("the config decides"). While click parses the command line,
the option's callback records its value under its config key in the context's ``meta`` (shared by
the group and its command); :func:`config_overrides` hands them to ``load_config``. A command
therefore never names a config key a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from pipelines.config import field_doc

_OVERRIDES = "oncall_router.config_overrides"  # the key in click's Context.meta


def config_option(key: str, *param_decls: str, **option: Any) -> Any:
    """A Typer option overriding config ``key``: ``Annotated[T | None, config_option(key)] = None``."""
    return typer.Option(
        *param_decls, help=option_help(key), show_default=False, callback=_recorder(key), **option
    )


def option_help(key: str) -> str:
    """``Training epochs. [config train.epochs; default 3]``: the field's description, choices
    and default."""
    doc = field_doc(key)
    choices = f"; one of {', '.join(doc.choices)}" if doc.choices else ""
    default = "" if doc.default is None else f"; default {doc.default_text}"
    env = f"; env {doc.env}" if doc.env else ""
    return f"{doc.description} [config {key}{choices}{default}{env}]"


def config_overrides(ctx: typer.Context) -> dict[str, Any]:
    """The config options parsed so far, by dotted key (``None``: not given)."""
    return dict(ctx.meta.get(_OVERRIDES, {}))


def _recorder(key: str) -> Callable[[typer.Context, Any], Any]:
    def record(ctx: typer.Context, value: Any) -> Any:
        ctx.meta.setdefault(_OVERRIDES, {})[key] = value
        return value

    return record
