"""The `tdntk` command line: one subcommand per experiment family.

Subcommands are imported lazily, so ``tdntk --help`` stays fast and a broken
optional dependency only affects its own command.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command
_COMMANDS = {
    "toy": "tdntk.experiments.toy:command",
    "cartpole": "tdntk.experiments.cartpole:command",
    "collect": "tdntk.datasets.cli:collect_command",
    "evaluate": "tdntk.datasets.cli:evaluate_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in _COMMANDS if self._module_exists(name)]

    @staticmethod
    def _module_exists(name):
        module = _COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in _COMMANDS or not self._module_exists(name):
            return None
        module, attr = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="tdntk")
def main():
    """TD-NTK: closed-form training dynamics of wide Q-network ensembles under TD learning."""


if __name__ == "__main__":
    main()
