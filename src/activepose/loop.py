"""The active-learning loop's planner: what to do next in a project, decided from the store alone.

The loop keeps no state of its own: every step (select, label, train, evaluate) is idempotent and records its
outcome in the project database in one transaction, so after a crash, `kill -9` or Ctrl-C the next step is
read back from the database and the loop continues where it stopped.

Order within a round: select (round 'open') -> label ('labelled') -> train ('trained') -> evaluate ('closed').
Before the first round, labels given at `init` (or imported outside any round) are trained on and evaluated
first, so the first selection already uses a model. `rounds` counts closed rounds in the project, earlier
ones included: the same command, run again, finishes what is missing and then does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import Project

ACTIONS = ("select", "label", "train", "evaluate", "done")


@dataclass(frozen=True)
class Step:
    """The next action, the round it belongs to (None: before or between rounds) and why."""

    action: str
    round: int | None
    reason: str


def is_evaluated(metrics: dict) -> bool:
    """True when a model's stored metrics hold an evaluation report (not only its fingerprint)."""
    return isinstance(metrics.get("clean"), dict)


def next_step(project: Project, rounds: int) -> Step:
    """Return the next step towards `rounds` closed rounds."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    current = project.current_round()
    if current is not None:
        r = current.id
        if current.state == "open":
            return Step("label", r, f"round {r} is open: {len(current.items)} image(s) to label")
        if current.state == "labelled":
            return Step("train", r, f"round {r} is labelled: train on all labels so far")
        return Step("evaluate", r, f"round {r} is {current.state}: evaluate its model and close it")
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
