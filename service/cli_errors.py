"""How the service CLIs fail, the way ``monolith-train`` does: exit status 2 and one line
``error: <message>`` on stderr, no traceback; results go to stdout, so they can be piped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def user_errors(*types: type[Exception]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a command fail with :func:`fail` on these exceptions (anything else is a bug and
    keeps its traceback)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except types as exc:
                fail(str(exc))

        return wrapper

    return decorate
