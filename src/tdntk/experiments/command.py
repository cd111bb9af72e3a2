"""`Command`: what the `tdntk` command line needs of an experiment (see `tdntk.cli`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..training import CHECKPOINT_EVERY_S

__all__ = ["Command", "doc", "overwrite_option", "checkpoint_option", "progress_option"]


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


def doc(text: str) -> dict:
    """A config field's metadata: its ``--help`` text."""
    return {"help": text}


# Options every command that writes an output folder shares (`tdntk.files.open_output`).
def overwrite_option():
    """``--overwrite``: the field of a config dataclass."""
    return field(
        default=False,
        metadata={
            "help": "Start afresh, replacing an earlier tdntk result in --out (only files "
            "tdntk wrote); without it, the same settings resume and others are refused."
        },
    )


def checkpoint_option(what: str = "training"):
    """``--checkpoint-every-s`` (seconds between checkpoints of `what`)."""
    return field(
        default=CHECKPOINT_EVERY_S,
        metadata={"help": f"Seconds between {what} checkpoints (also at recorded steps)."},
    )


def progress_option():
    """``--progress / --no-progress``."""
    return field(default=True, metadata={"help": "Show progress bars."})
