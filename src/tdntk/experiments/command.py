"""`Command`: what the `tdntk` command line needs of an experiment (see `tdntk.cli`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Command"]


@dataclass(frozen=True)
class Command:
    """One command: a frozen dataclass of settings and the function that runs them.

    Attributes:
        config: the frozen dataclass of settings; the CLI's options are its fields.
        run: ``run(cfg)`` does the work and prints what it wrote.
        help: the command's help text.
        presets: preset name -> config (empty: the dataclass defaults).
        default_preset: the preset used without ``--preset``.
    """

    config: type
    run: Callable[[object], object]
    help: str
    presets: Mapping[str, object] = field(default_factory=dict)
    default_preset: str | None = None
