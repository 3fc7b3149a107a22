"""How a subcommand registers itself: one help line, its module's docstring, and its examples."""

from __future__ import annotations

import argparse
import re

#: Sphinx roles (:func:`bitfold.quantize`, :class:`~x.Y`) and ``literals`` in docstrings.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(doc: str) -> str:
    """``doc`` as a terminal shows it: Sphinx roles and double-backtick literals unwrapped."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", doc))


def add_command(subparsers, name: str, summary: str, doc: str, examples: str) -> argparse.ArgumentParser:
    """A subparser whose description is ``doc`` without its first paragraph (the usage line;
    for a one-paragraph docstring, what follows its first colon, capitalized), in plain text, and whose
    epilog is ``examples``."""
    head, _, body = doc.partition("\n\n")
    description = body.strip()
    if not description:
        tail = head.split(":", 1)[-1].strip()
        description = tail[:1].upper() + tail[1:]
    return subparsers.add_parser(name, help=summary, description=plain_text(description), epilog=examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
