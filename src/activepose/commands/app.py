"""The typer app, its console and the one place where errors become exit codes.

Every command is registered through `command()`, which catches `ActiveposeError` (and the environment's
OSErrors: disk full, read-only, permission) once: one line on stderr-style output and exit 2. Ctrl-C exits
130. Anything else is a bug: the traceback is printed and saved to a log file whose path is shown.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import ActiveposeError
from ..workflow.reporting import Reporter

app = typer.Typer(
    help="Hybrid active learning for bottom-up human pose estimation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Logs and pipes get wide lines so that tables are never cut; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 160)
LOG = logging.getLogger("activepose")
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT}


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging.", metavar=""),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # never break paths
    raise typer.Exit(code=code)


_SECRET_OPTIONS = ("--token",)
_SECRETS: set[str] = set()  # secret values read at run time (a --token-file's token)


def remember_secret(value: str) -> None:
    """Keep `value` out of tracebacks and crash logs (as command-line and ACTIVEPOSE_TOKEN values are)."""
    _SECRETS.add(value)


def redacted(argv: list[str]) -> tuple[list[str], set[str]]:
    """Return the command line with secret options' values (`--token X`, `--token=X`) replaced by ***, and
    every secret value this process knows: those values, ACTIVEPOSE_TOKEN and `remember_secret`'s."""
    out, found = [], {os.environ.get("ACTIVEPOSE_TOKEN", ""), *_SECRETS}
    hide = False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if hide:
            found.add(arg)
            out.append("***")
        elif eq and name in _SECRET_OPTIONS:
            found.add(value)
            out.append(f"{name}=***")
        else:
            out.append(arg)
        hide = not hide and arg in _SECRET_OPTIONS
    return out, {v for v in found if v}


def redact(text: str, argv: list[str]) -> str:
    """`text` with every secret value (see `redacted`) replaced by ***, longest first."""
    for value in sorted(redacted(argv)[1], key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def _crash_log(text: str) -> Path:
    """Write `text` to a new log file that only this user can read (0600, in a 0700 folder); return its path.

    The folder is ~/.cache/activepose/logs (or $XDG_CACHE_HOME's); where that cannot be made, a new private
    folder under the temporary directory (never a file straight in a world-writable /tmp, where another user
    could read it or plant a link in its place).
    """
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "activepose" / "logs"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="activepose-logs-"))  # 0700, made for this log alone
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def handled(fn):
    """Wrap a command: user/environment mistakes exit 2 with one message, Ctrl-C 130, bugs 1 with a log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except ActiveposeError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted:[/] every finished step is stored; run the same command to continue"
            )
            raise typer.Exit(code=130) from None
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise _bug(exc) from None
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")
        except Exception as exc:
            raise _bug(exc) from None

    return wrapper


def _bug(exc: BaseException) -> typer.Exit:
    text = redact("".join(traceback.format_exception(exc)), sys.argv[1:])
    console.print(escape(text), soft_wrap=True, highlight=False)
    try:
        command = " ".join(redacted(sys.argv[1:])[0])
        log = _crash_log(f"activepose {command}\n\n{text}")
        where = f"the traceback is saved in {log}"
    except OSError:
        where = "the traceback is above"
    console.print(f"[bold red]internal error[/] (a bug in activepose, not in your input): {escape(type(exc).__name__)}; "
                  f"{where}: please report it", soft_wrap=True)  # fmt: skip
    return typer.Exit(code=1)


def command(name: str | None = None):
    """Register a command on the app with the shared error handling."""

    def decorator(fn):
        return app.command(name)(handled(fn))

    return decorator


def next_step(text: str) -> None:
    """Print the 'what next' line every command ends with."""
    console.print(f"[bold]next:[/] {text}", soft_wrap=True)


def print_list(title: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    console.print(f"[yellow]{title}[/] ({len(items)}):")
    for item in items[:limit]:
        console.print(f"  - {escape(item)}", soft_wrap=True)
    if len(items) > limit:
        console.print(f"  ... and {len(items) - limit} more")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


class RichReporter(Reporter):
    """Progress bars (one per stage, an 'overall' one with ETA kept on top) and notes on the console."""

    def __init__(self) -> None:
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}
        self.epoch_task = None
        self.loss = math.nan

    def __enter__(self) -> RichReporter:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def progress(self, stage: str, done: int, total: int | None, info: str = "") -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.bars.add_task(stage, total=total, info=info)
        self.bars.update(task, completed=done, total=total, info=info)
        if stage != "overall" and total is not None and done >= total:
            self.bars.remove_task(task)  # a finished stage makes room; its outcome is printed as a note
            del self.tasks[stage]

    def note(self, text: str) -> None:
        self.bars.console.print(escape(text), soft_wrap=True)

    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None:
        if self.epoch_task is not None:
            self.bars.remove_task(self.epoch_task)
        self.epoch_task = self.bars.add_task(f"session {session} epoch {epoch}", total=num_batches, info="")

    def on_batch_end(self, loss: float) -> None:
        self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        self.bars.update(self.epoch_task, advance=1, info=f"loss {self.loss:.5f}")

    def on_epoch_end(self, record, improved: bool) -> None:
        mark = "[green]*[/]" if improved else " "
        self.bars.console.print(
            f"{mark} session {record.session} epoch {record.epoch:3d}  train {record.train_loss:.5f}  "
            f"val {record.val_loss:.5f}"
            + (
                f"  val PCK {100 * record.val_pck:.1f} %"
                if getattr(record, "val_pck", None) is not None
                else ""
            )
            + f"  lr {record.lr:.2e}  {record.images / max(record.seconds, 1e-9):.1f} img/s"
        )
        if self.epoch_task is not None:
            self.bars.remove_task(self.epoch_task)
            self.epoch_task = None
