"""How a subcommand registers itself: one help line, its module's docstring, and its examples."""

from __future__ import annotations

import argparse


def add_command(subparsers, name: str, summary: str, doc: str, examples: str) -> argparse.ArgumentParser:
    """A subparser whose description is ``doc`` without its first paragraph (the usage line;
    for a one-paragraph docstring, what follows its first colon) and whose epilog is ``examples``."""
    head, _, body = doc.partition("\n\n")
    description = body.strip() or head.split(":", 1)[-1].strip()
    return subparsers.add_parser(name, help=summary, description=description, epilog=examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
