"""Frozen experiment configs -> click options, so flags, defaults and help agree.

An experiment declares a frozen dataclass whose fields carry help text in
``field(metadata={"help": ...})`` and a dict of presets (e.g. "quick",
"paper"). `config_command` turns it into a click command with ``--preset`` and
one ``--field-name`` option per field; explicit options override the preset.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping

import click

__all__ = ["config_command", "apply_overrides"]


def _option_type(tp):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _option_type(inner[0]) if len(inner) == 1 else str
    if origin is tuple:
        return args[0] if args else str
    if tp is bool:
        return bool
    return tp if tp in (int, float, str) else str


def _is_tuple(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is tuple


def apply_overrides(cfg, overrides: Mapping[str, object]):
    """Return `cfg` with the non-None `overrides` (field name -> value) replaced."""
    changes = {k: v for k, v in overrides.items() if v is not None and v != ()}
    return dataclasses.replace(cfg, **changes)


def config_command(
    name: str,
    config_cls: type,
    presets: Mapping[str, object],
    run: Callable[[object], object],
    help: str,
    default_preset: str = "quick",
):
    """A click command running ``run(cfg)`` for a preset of `config_cls` with overrides."""
    hints = typing.get_type_hints(config_cls)
    params = [
        click.Option(
            ["--preset"],
            type=click.Choice(sorted(presets)),
            default=default_preset,
            show_default=True,
            help="Base settings; other options override them.",
        )
    ]
    base = presets[default_preset]
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(base, f.name)
        help_text = f.metadata.get("help", "") + f" [{default_preset}: {default!r}]"
        if tp is bool:
            params.append(
                click.Option(
                    [f"{flag}/--no-{f.name.replace('_', '-')}"], default=None, help=help_text
                )
            )
        else:
            params.append(
                click.Option(
                    [flag],
                    type=_option_type(tp),
                    default=None,
                    multiple=_is_tuple(tp),
                    help=help_text,
                )
            )

    def callback(preset, **values):
        cfg = apply_overrides(
            presets[preset],
            {k: (tuple(v) if isinstance(v, tuple) else v) for k, v in values.items()},
        )
        return run(cfg)

    return click.Command(name, params=params, callback=callback, help=help)
