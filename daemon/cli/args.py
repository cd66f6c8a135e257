"""Argument pieces every command shares (kept apart from daemon.cli.main, which imports the commands)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence


def config_parent() -> argparse.ArgumentParser:
    """`--config FILE`, accepted before the command, after it, and after a nested action."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML settings file (default: embedded defaults + CXRD_* environment)")
    return common


class CommandParser(argparse.ArgumentParser):
    """Every parser of `cxrd`, from the top down to a nested action such as `audit verify`.

    - Each one takes `--config`, so it may be given wherever a person puts it (SUPPRESS as the default
      keeps a nested parser from overwriting a value given earlier).
    - A sub-command's `--help` starts with the line `cxrd --help` lists it with.
    - `arguments=` defers building a sub-command's arguments until that sub-command is parsed or its
      help is shown: `cxrd train` takes its options from a module that imports torch, and listing or
      running any other command must not pay for that. The function gets the keyword arguments this
      parser was made with and returns the complete parser, which this one then stands for.
    """

    def __init__(self, *, arguments: Callable[[dict[str, Any]], argparse.ArgumentParser] | None = None,
                 **kwargs: Any) -> None:
        self._made_with = dict(kwargs)
        self._arguments = arguments
        self._complete: argparse.ArgumentParser | None = None
        super().__init__(**{**kwargs, "parents": [config_parent(), *kwargs.get("parents", [])]})

    def _full(self) -> argparse.ArgumentParser | None:
        """The complete parser a deferred sub-command stands for (built once); None if not deferred."""
        if self._arguments is not None and self._complete is None:
            self._complete = self._arguments(self._made_with)
        return self._complete

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        actions = super().add_subparsers(**kwargs)
        add_parser = actions.add_parser

        def add_with_description(name: str, **options: Any) -> argparse.ArgumentParser:
            if "help" in options:
                options.setdefault("description", options["help"])
            return add_parser(name, **options)

        actions.add_parser = add_with_description  # type: ignore[method-assign]
        return actions

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        full = self._full()
        if full is not None:
            return full.parse_known_args(args, namespace)
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        full = self._full()
        return full.format_usage() if full is not None else super().format_usage()

    def format_help(self) -> str:
        full = self._full()
        return full.format_help() if full is not None else super().format_help()
