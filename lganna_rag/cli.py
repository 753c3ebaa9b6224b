"""The ``lganna-rag`` command line. Sub-commands of other parts (``bench``, ``train``) load on use."""

from __future__ import annotations

import importlib
from typing import Any

import click


class LazyGroup(click.Group):
    """A click group whose listed sub-commands are imported only when they are used or listed."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_subcommands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module, attr = self.lazy_subcommands[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_subcommands={"bench": "lganna_rag.benchmarks.cli:bench"},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="lganna-rag")
def main() -> None:
    """lganna-rag: instruction-aware embeddings, Qdrant indexing and search."""


if __name__ == "__main__":
    main()
