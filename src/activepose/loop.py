"""The active-learning loop: what to do next in a project (decided from the store alone), and `run`.

The loop keeps no state of its own: every step (select, label, train, evaluate) is idempotent and records its
outcome in the project database in one transaction, so after a crash, `kill -9` or Ctrl-C the next step is
read back from the database and the loop continues where it stopped.

Order within a round: select (round 'open') -> label ('labelled') -> train ('trained') -> evaluate
('evaluated', then 'closed' once the learning curve is written; a crash in between is finished by 'close').
Before the first round, labels given at `init` (or imported outside any round) are trained on and evaluated
first, so the first selection already uses a model. `rounds` counts closed rounds in the project, earlier
ones included: the same command, run again, finishes what is missing and then does nothing.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import EvalOptions, SelectOptions, TrainConfig
from .errors import ConfigError, StateError
from .lock import project_lock
from .oracle import Labeller
from .project.store import Project
from .workflow.curve import is_evaluated, write_learning_curve
from .workflow.reporting import SILENT, Reporter
from .workflow.rounds import close_round, evaluate_round, label_round, select_round, test_set_of, train_round

ACTIONS = ("select", "label", "train", "evaluate", "close", "done")
STEPS_PER_ROUND = 4  # select, label, train, evaluate (close is part of evaluate unless a crash split them)

__all__ = ["ACTIONS", "RunOptions", "RunOutcome", "Step", "is_evaluated", "next_step", "run"]


@dataclass(frozen=True)
class Step:
    """The next action, the round it belongs to (None: before or between rounds) and why."""

    action: str
    round: int | None
    reason: str


def next_step(project: Project, rounds: int) -> Step:
    """Return the next step towards `rounds` closed rounds."""
    if rounds < 0:
        raise ConfigError(f"rounds must be >= 0, got {rounds}")
    current = project.current_round()
    if current is not None:
        r = current.id
        if current.state == "open":
            return Step("label", r, f"round {r} is open: {len(current.items)} image(s) to label")
        if current.state == "labelled":
            return Step("train", r, f"round {r} is labelled: train on all labels so far")
        if current.state == "trained":
            return Step("evaluate", r, f"round {r} is trained: evaluate its model")
        return Step("close", r, f"round {r} is evaluated: write its learning curve and close it")
    labelled = len(project.labelled_ids())
    latest = project.latest_model()
    if labelled and (latest is None or latest.train_size != labelled):
        seen = "no model yet" if latest is None else f"the newest model saw {latest.train_size}"
        return Step("train", None, f"{labelled} labelled image(s) outside any open round, {seen}")
    if latest is not None and not is_evaluated(latest.metrics):
        return Step("evaluate", None, f"model {latest.id} has not been evaluated")
    closed = sum(1 for r in project.rounds() if r.state == "closed")
    if closed >= rounds:
        return Step("done", None, f"{closed} round(s) closed (asked for {rounds})")
    return Step("select", closed + 1, f"{closed} of {rounds} round(s) closed: open round {closed + 1}")


def remaining_steps(project: Project, rounds: int) -> int:
    """Return how many steps `run` still has to do (for an overall progress bar with an ETA)."""
    current = project.current_round()
    closed = sum(1 for r in project.rounds() if r.state == "closed")
    left = 0
    if current is not None:
        left += {"open": 3, "labelled": 2, "trained": 1, "evaluated": 1}[current.state]
        closed += 1
    else:
        step = next_step(project, max(rounds, closed))
        left += {"train": 2, "evaluate": 1}.get(step.action, 0)
    return left + STEPS_PER_ROUND * max(0, rounds - closed)


@dataclass
class RunOptions:
    """Everything `run` needs: per-round budget, an oracle, and the select / train / evaluate settings."""

    budget: int
    oracle: (
        Labeller  # oracle.simulated.SimulatedLabeller, oracle.files.FileLabeller, web.labeller.WebLabeller
    )
    train: TrainConfig
    select: SelectOptions | None = None  # its budget is replaced by `budget`; default: hybrid
    evaluate: EvalOptions = field(default_factory=EvalOptions)
    seed: int = 0  # selection in round r uses seed + r

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ConfigError(f"--budget must be >= 1, got {self.budget}")
        self.select = dataclasses.replace(
            self.select or SelectOptions(budget=self.budget), budget=self.budget
        )


@dataclass
class RunOutcome:
    steps: list[tuple[str, int | None, float]]  # (action, round, seconds) done by this call
    reason: str  # why it stopped
    curve: Path | None
    seconds: float


def check_run(project: Project, rounds: int, opts: RunOptions) -> None:
    """Raise before any work when the request cannot succeed (bad rounds, no test set, ground truth gaps)."""
    if rounds < 0:
        raise ConfigError(f"--rounds must be >= 0, got {rounds}")
    test_set_of(project, opts.evaluate)
    current = project.current_round()
    closed = sum(1 for r in project.rounds() if r.state == "closed")
    to_open = max(0, rounds - closed - (current is not None))
    unlabelled = project.counts()["unlabelled"]
    if to_open * opts.budget > unlabelled:
        raise StateError(
            f"{project.folder}: {to_open} more round(s) of --budget {opts.budget} need {to_open * opts.budget} images "
            f"but {unlabelled} unlabelled images are left; lower --rounds or --budget"
        )
    check = getattr(opts.oracle, "check_covers", None)
    if check is not None:
        check(project)


@contextmanager
def _noticed_interrupts() -> Iterator[Callable[[], bool]]:
    """Yield a check "was Ctrl-C pressed?" that stays true once SIGINT arrived, while SIGINT still raises
    KeyboardInterrupt as usual. Python loses a KeyboardInterrupt that lands in a finalizer (a `__del__` or a
    weakref callback run by the garbage collector: "Exception ignored in ...") and a library may swallow it;
    with the check the loop still stops at the next step boundary. Only in the main thread, and only where
    SIGINT is handled by Python (a background job started with SIGINT ignored keeps ignoring it)."""
    hit = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield hit.is_set
        return

    def on_sigint(signum, frame):
        hit.set()
        previous(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def run(folder: str | Path, rounds: int, opts: RunOptions, reporter: Reporter = SILENT) -> RunOutcome:
    """Run select -> label -> train -> evaluate until the project has `rounds` closed rounds.

    Holds the project's lock throughout; every step is stored before the next starts, so after an
    interruption the same call continues where it stopped. Without a model, round 1 is chosen by diversity.
    """
    folder = Path(folder)
    t_start = time.monotonic()
    done: list[tuple[str, int | None, float]] = []
    with _noticed_interrupts() as interrupted, project_lock(folder, "run"):
        with Project.open(folder) as project:
            check_run(project, rounds, opts)
            total = remaining_steps(project, rounds)
            reporter.progress("overall", 0, total)
            last = None
            while True:
                step = next_step(project, rounds)
                if step.action == "done":
                    reason = step.reason
                    break
                if (step.action, step.round) == last:  # every step must move the project forward
                    raise StateError(
                        f"{folder}: step {step.action!r} did not advance the project ({step.reason})"
                    )
                last = (step.action, step.round)
                where = f"round {step.round}" if step.round is not None else "initial labels"
                reporter.note(f"{where}: {step.action} ({step.reason})")
                t0 = time.monotonic()
                _do(project, step, opts, reporter)
                done.append((step.action, step.round, time.monotonic() - t0))
                total = len(done) + remaining_steps(project, rounds)
                reporter.progress("overall", len(done), total, f"{where}: {step.action} done")
                if interrupted():  # a Ctrl-C that was lost on the way (see `_noticed_interrupts`)
                    raise KeyboardInterrupt
            curve = write_learning_curve(project)
    return RunOutcome(done, reason, curve, time.monotonic() - t_start)


def _do(project: Project, step: Step, opts: RunOptions, reporter: Reporter) -> None:
    if step.action == "select":
        sel = opts.select
        sel = dataclasses.replace(
            sel, selection=dataclasses.replace(sel.selection, seed=opts.seed + step.round)
        )
        res = select_round(project, sel, reporter)
        reporter.note(f"opened round {res.round_id} with {len(res.ids)} images ({res.strategy})")
    elif step.action == "label":
        res = label_round(project, opts.oracle, reporter=reporter)
        reporter.note(f"{res.message}; round {res.round_id} is {res.state}")
    elif step.action == "train":
        res = train_round(project, opts.train, reporter)
        r = res.result
        kept = "; kept the previous model: no epoch beat it on validation" if r.kept == "previous" else ""
        reporter.note(
            f"model {res.model_id} trained on {res.train_size} images: {r.steps} batches, "
            f"{r.stopped.replace('_', ' ')}{kept}"
        )
    elif step.action == "evaluate":
        res = evaluate_round(project, opts.evaluate, reporter)
        clean = res.report.get("clean") or next(iter(res.report.values()))
        shown = ", ".join(f"{k} {100 * clean[k]:.1f}" for k in ("count_acc", "AP", "PCK") if k in clean)
        reporter.note(
            f"model {res.model_id}: {shown}" + (f"; round {res.round_id} closed" if res.round_id else "")
        )
    else:
        close_round(project, step.round)
        reporter.note(f"round {step.round} closed")
