"""What every command shares: ``--root``/``--db`` and the invocation's settings (:func:`common`), clean errors, the ``main`` group, output helpers."""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable

import click

from .. import Federation, config
from ..errors import ConfigError, FederationError


def _option_values(root: str | None, db: str | None) -> dict[str, str]:
    """The variables ``--root`` and ``--db`` stand for (they win over the environment)."""
    values = {}
    if root:
        values["FEDERATION_ROOT"] = root
    if db:
        if db.startswith(("postgresql://", "postgres://")):
            values["FEDERATION_DB_URL"] = db
        else:
            values["FEDERATION_DB"] = db
    return values


#: where the invocation's settings are kept in click's context (its ``meta`` is shared by sub-contexts)
_SETTINGS = "federation.settings"
_FEDERATION = "federation.federation"


def _settings() -> config.Settings:
    """The settings this invocation was given (built once by :func:`common`)."""
    return click.get_current_context().meta[_SETTINGS]


def _federation() -> Federation:
    """The federation this invocation serves, built once by :func:`common` from its settings: handed to the
    servers and the dashboard."""
    return click.get_current_context().meta[_FEDERATION]


def common(fn: Callable) -> Callable:
    """Add --root/--db, build the invocation's settings, set up logging, turn errors into clean exits."""

    @click.option("--db", "db", metavar="PATH", help="SQLite file, or a postgresql:// URL (wins over the environment).")
    @click.option("--root", "root", metavar="DIR", help="Root of the legacy file tree (wins over FEDERATION_ROOT).")
    @click.option("-v", "--verbose", is_flag=True,
                  help="On a terminal, show every log event (by default only warnings and errors).")
    @functools.wraps(fn)
    def wrapper(root: str | None, db: str | None, verbose: bool, **kwargs: Any) -> Any:
        from .._logging import configure

        configure(verbose=verbose)
        values = _option_values(root, db)
        try:
            s = config.settings_with(values)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        _check_root(s.root, given=bool(root))
        _check_db_folder(s, given=bool(db))
        click.get_current_context().meta[_ROOT_GIVEN] = bool(root)
        fed = Federation(s)
        click.get_current_context().meta[_SETTINGS] = s
        click.get_current_context().meta[_FEDERATION] = fed
        try:
            # the public functions and the legacy module called by the command serve its federation too
            # (in this thread; nothing is overridden for the process, nor left behind)
            with fed.serve():
                return fn(**kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except BrokenPipeError:
            _reader_gone()
        except (FederationError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def _reader_gone() -> None:
    """The reader of stdout went away (`federation report | head -1`): what it wanted it has; end quietly
    (exit 0), with stdout pointed at /dev/null so that the interpreter's last flush raises nothing."""
    import os

    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


#: commands that read or change an existing federation: a root that does not exist is a mistyped one
_NEEDS_ROOT = {"migrate", "report", "sync", "doctor", "archive-legacy", "rollout", "restore"}


def _check_root(root: Any, given: bool) -> None:
    """A usage error (exit 2, nothing created) when this command needs the root and it is not a folder."""
    ctx = click.get_current_context()
    names = {c.info_name for c in _contexts(ctx)}
    if not names & _NEEDS_ROOT or root.is_dir():
        return
    where = "--root" if given else "FEDERATION_ROOT (or the default root)"
    what = "is not a folder" if root.exists() else "does not exist"
    raise click.UsageError(f"the federation root {root} ({where}) {what}: nothing was read or created; "
                           "check the path")


def _check_db_folder(s: config.Settings, given: bool) -> None:
    """A usage error (exit 2, nothing created) when a command of an existing federation is given a SQLite
    ``--db`` in a folder that does not exist: a mistyped path, whose folders the database would otherwise
    create (``migrate`` into a new database nobody else uses)."""
    if not given or s.db_url:
        return
    ctx = click.get_current_context()
    if not {c.info_name for c in _contexts(ctx)} & _NEEDS_ROOT:
        return
    folder = s.db_path.parent
    if not folder.exists():
        raise click.UsageError(f"the database's folder {folder} (--db {s.db_path}) does not exist: nothing was "
                               "read or created; check the path")


def _contexts(ctx: click.Context | None) -> list[click.Context]:
    out = []
    while ctx is not None:
        out.append(ctx)
        ctx = ctx.parent
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="federation")
def main() -> None:
    """Shared state for a federation of cooperating AI agents."""




def _progress(as_json: bool = False) -> bool:
    """A progress bar only for a person watching a terminal."""
    return sys.stderr.isatty() and not as_json


def _guard(fn: Callable[[], Any]) -> Any:
    """Run *fn*; a database or file error becomes one line and exit 1."""
    try:
        return fn()
    except (FederationError, click.ClickException, SystemExit):
        raise
    except Exception as exc:  # e.g. a driver error the store does not translate
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


def _columns(rows: list[tuple], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                             enumerate(zip(r, widths))))


def _listing(title: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    click.echo(f"{title} ({len(items)}):")
    for item in items[:limit]:
        click.echo(f"  {item}")
    if len(items) > limit:
        click.echo(f"  ... and {len(items) - limit} more (--json lists all)")




_ROOT_GIVEN = "federation.root_given"
