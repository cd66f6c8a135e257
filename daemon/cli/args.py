"""Argument pieces every command shares (kept apart from daemon.cli.main, which imports the commands)."""
from __future__ import annotations

import argparse


def config_parent() -> argparse.ArgumentParser:
    """`--config FILE`, accepted before the command, after it, and after a nested action."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML settings file (default: embedded defaults + CXRD_* environment)")
    return common
