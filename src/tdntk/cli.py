"""The `tdntk` command line, generated from the experiments' frozen configs.

Every command is one frozen dataclass of settings and a ``run(cfg)``
function (`tdntk.experiments.command.Command`); its options are generated
from the dataclass fields, so flags, defaults, choices and help agree with
the Python API:

* one ``--field-name`` per field; a nested dataclass field (e.g. ``net: MLP``)
  contributes its own fields, unprefixed (``--depth``, ``--width``, ...);
* ``bool`` -> ``--flag/--no-flag``; ``typing.Literal`` -> a choice;
  ``tuple[X, ...]`` -> a repeatable option; ``float`` accepts ``inf``;
* ``--preset`` chooses the base settings when the command has presets;
  explicit options override them; a field whose metadata says
  ``required=True`` must be given.

Commands are imported lazily, so ``tdntk --help`` stays fast and a broken
optional dependency only affects its own command. Bad input (a setting the
config refuses, a missing file, an import error of a user's policy, an
output folder tdntk may not write into) ends in a one-line error, never a
traceback. Ctrl-C ends with exit status 130 and, when the run saved work in
its output folder, the exact command that resumes it.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import shlex
import sys
import types
import typing
from collections.abc import Mapping

try:
    import click
except ImportError:  # the closed-form core is installed without the command line's extras
    raise SystemExit(
        "the tdntk command needs the 'experiments' extra: pip install 'tdntk[experiments]'"
    ) from None
from click.core import ParameterSource  # noqa: E402

from .experiments.command import Command

__all__ = ["config_command", "apply_overrides", "main"]

# Errors that describe bad input; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, ImportError)


# name -> "module:attribute" of a `Command`
COMMANDS = {
    "toy": "tdntk.experiments.toy:COMMAND",
    "cartpole": "tdntk.experiments.cartpole:COMMAND",
    "collect": "tdntk.experiments.collect:COMMAND",
    "evaluate": "tdntk.experiments.evaluate:COMMAND",
    "compare": "tdntk.experiments.compare:COMMAND",
}


# ---------------------------------------------------------------------- option types
class _Float(click.ParamType):
    """A float that also reads ``inf``; NaN is refused."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            out = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number (or inf), got {value!r}", param, ctx)
        if out != out:
            self.fail("NaN is not a valid value", param, ctx)
        return out


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _click_type(tp):
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)])
    if typing.get_origin(tp) is tuple:
        return _click_type(typing.get_args(tp)[0])
    if tp is float:
        return _Float()
    return tp if tp in (int, str) else str


def _leaf_fields(cls, prefix=()) -> list[tuple[tuple[str, ...], dataclasses.Field, object]]:
    """(path, field, type) of every setting, nested dataclass fields expanded."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.extend(_leaf_fields(tp, prefix + (f.name,)))
        else:
            out.append((prefix + (f.name,), f, hints[f.name]))
    return out


def _get(cfg, path):
    for name in path:
        cfg = getattr(cfg, name)
    return cfg


def apply_overrides(cfg, overrides: Mapping[tuple[str, ...], object]):
    """Return `cfg` with the non-None values of `overrides` (field path -> value) replaced.

    A path of several names reaches into nested dataclass fields (rebuilt, so
    their validation runs again).
    """
    grouped: dict[str, dict] = {}
    direct = {}
    for path, value in overrides.items():
        if value is None or value == ():
            continue
        if len(path) == 1:
            direct[path[0]] = value
        else:
            grouped.setdefault(path[0], {})[path[1:]] = value
    for name, sub in grouped.items():
        direct[name] = apply_overrides(getattr(cfg, name), sub)
    return dataclasses.replace(cfg, **direct) if direct else cfg


def _class_default(cls, path):
    """The default of the field at `path` from the dataclass definitions (None if none)."""
    f = {g.name: g for g in dataclasses.fields(cls)}[path[0]]
    value = None if f.default is dataclasses.MISSING else f.default
    return value if len(path) == 1 or value is None else _get(value, path[1:])


def _option(path, f, tp, base, cls) -> click.Option:
    flag = "--" + path[-1].replace("_", "-")
    default = _get(base, path) if base is not None else _class_default(cls, path)
    shown = "" if default is None or default == () else f" [default: {_show(default)}]"
    help_text = f.metadata.get("help", "") + shown
    required = bool(f.metadata.get("required")) and default is None
    if _unwrap_optional(tp) is bool:
        off = "--no-" + path[-1].replace("_", "-")
        return click.Option([f"{flag}/{off}", path[-1]], default=None, help=help_text)
    is_tuple = typing.get_origin(_unwrap_optional(tp)) is tuple
    return click.Option(
        [flag, path[-1]],
        type=_click_type(tp),
        default=None,
        required=required,
        multiple=is_tuple,
        help=help_text,
    )


def _show(value) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _convert(value, tp):
    """Click's value -> the field's type (choices of a numeric Literal, tuples)."""
    inner = _unwrap_optional(tp)
    if value is None or value == ():
        return value
    if typing.get_origin(inner) is tuple:
        return tuple(value)
    if typing.get_origin(inner) is typing.Literal:
        return next(a for a in typing.get_args(inner) if str(a) == value)
    return value


def config_command(name: str, command: Command) -> click.Command:
    """The click command of `command`: options from its config, then ``command.run(cfg)``."""
    presets = dict(command.presets)
    base = presets.get(command.default_preset) if presets else None
    leaves = _leaf_fields(command.config)
    params = []
    if presets:
        params.append(
            click.Option(
                ["--preset"],
                type=click.Choice(sorted(presets)),
                default=command.default_preset,
                show_default=True,
                help="Base settings; other options override them.",
            )
        )
    params += [_option(path, f, tp, base, command.config) for path, f, tp in leaves]

    def callback(preset=None, **values):
        start = presets[preset] if presets else None
        overrides = {path: _convert(values[path[-1]], tp) for path, _, tp in leaves}
        try:
            if start is None:
                given = {p: v for p, v in overrides.items() if v is not None and v != ()}
                cfg = _build(command.config, given)
            else:
                cfg = apply_overrides(start, overrides)
        except (ValueError, TypeError) as err:
            raise click.UsageError(str(err)) from None
        try:
            return command.run(cfg)
        except KeyboardInterrupt as err:
            ctx = click.get_current_context()
            click.echo(_interrupted(ctx, err), err=True)
            ctx.exit(130)
        except INPUT_ERRORS as err:
            raise click.ClickException(str(err)) from None

    return click.Command(
        name, params=params, callback=callback, help=command.help, short_help=SHORT_HELP.get(name)
    )


def _interrupted(ctx: click.Context, err: KeyboardInterrupt) -> str:
    """What Ctrl-C left: the saved work and the command that resumes it, or nothing."""
    if not getattr(err, "saved", False):
        return "\nInterrupted; nothing was saved."
    return (
        f"\nInterrupted; the work done so far is saved in {err.out}. To resume, run the same "
        f"command again:\n  {resume_command(ctx)}"
    )


def resume_command(ctx: click.Context) -> str:
    """The command line of `ctx` with the options the user gave (``--overwrite`` dropped, so
    that rerunning it resumes instead of starting afresh), shell-quoted."""
    words = ["tdntk", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        given = ctx.get_parameter_source(param.name) not in (None, ParameterSource.DEFAULT)
        if param.name == "overwrite" or not given or value is None or value == ():
            continue
        if isinstance(param, click.Option) and param.secondary_opts:  # --flag/--no-flag
            words.append(param.opts[0] if value else param.secondary_opts[0])
            continue
        for v in value if isinstance(value, tuple) else (value,):
            words += [param.opts[0], repr(v) if isinstance(v, float) else str(v)]
    return shlex.join(words)


def _build(cls, given: Mapping[tuple[str, ...], object]):
    """``cls(**given)`` with nested dataclass fields built from their own paths."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            sub = {p[1:]: v for p, v in given.items() if p[0] == f.name}
            if sub:
                default = f.default if f.default is not dataclasses.MISSING else None
                kwargs[f.name] = (
                    apply_overrides(default, sub) if default is not None else _build(tp, sub)
                )
        elif (f.name,) in given:
            kwargs[f.name] = given[(f.name,)]
    return cls(**kwargs)


# ---------------------------------------------------------------------- the group
class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._module_exists(name)]

    @staticmethod
    def _module_exists(name):
        return importlib.util.find_spec(COMMANDS[name].split(":")[0]) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._module_exists(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return config_command(name, getattr(importlib.import_module(module), attr))

    def format_commands(self, ctx, formatter):
        """List the commands with their short help, without importing their modules."""
        rows = [(name, SHORT_HELP[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


SHORT_HELP = {
    "toy": "The toy chain experiment: the paper's figures 1-4, 6, 7 and a width sweep.",
    "cartpole": "CartPole offline policy evaluation: the paper's Table 1 and more.",
    "collect": "Collect transitions of a policy in any Gymnasium environment (.npz).",
    "evaluate": "Values with uncertainty for a policy from offline data (TD-NTK).",
    "compare": "Compare policies offline: values, differences, P(J_a > J_b).",
}


@click.group(cls=_LazyGroup)
@click.version_option(package_name="tdntk")
def main():
    """TD-NTK: closed-form training dynamics of wide Q-network ensembles under TD learning."""
    _show_stage_messages()


def _show_stage_messages() -> None:
    """Print the library's stage messages (kernel passes, Krylov iterations) to stderr."""
    logger = logging.getLogger("tdntk")
    if not any(getattr(h, "_tdntk_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[tdntk] %(message)s"))
        handler._tdntk_cli = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


if __name__ == "__main__":
    main()
