"""The labelling page's side of the store: leases on images and revision-checked saves and skips.

An annotator who opens an image leases it (`take_lease`); others cannot save it until the lease ends. A save
(`save_labels`) or skip (`skip_image`) names the image revision the page started from: if someone saved it
meanwhile, nothing is overwritten (LabelConflict) unless forced. Each is one transaction that also releases the
lease and, for the round's last image, completes the round. `LabellingStore` is a part of `Project`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import MAX_LEASE_SECONDS, lease_problem
from .schema import StoreError


@dataclass(frozen=True)
class Lease:
    """An image being labelled by one annotator on the labelling page, until `expires_at` (Unix time)."""

    image_id: int
    annotator: str
    expires_at: float


@dataclass(frozen=True)
class SaveResult:
    new_labels: int  # label rows added (0: the same labels were stored already, or a skip)
    revision: int  # the image's revision after the save
    state: str  # the image's state after the save
    round_completed: bool  # the round moved open -> labelled in the same transaction


class LabelConflict(StoreError):
    """A save named a revision of the image that is no longer current: someone saved it meanwhile."""

    def __init__(self, message: str, revision: int):
        super().__init__(message)
        self.revision = revision


class LeaseHeld(StoreError):
    """Another annotator holds the image's lease."""

    def __init__(self, message: str, lease: Lease):
        super().__init__(message)
        self.lease = lease


def check_lease_seconds(seconds: float) -> float:
    """Return a lease length as float; StoreError unless it is a finite number in (0, MAX_LEASE_SECONDS]."""
    problem = lease_problem(seconds)
    if problem is not None:
        raise StoreError(problem)
    return float(seconds)


class LabellingStore:
    """Leases and revision-checked saves: the methods of `Project` that the labelling page uses."""

    def leases(self, now: float | None = None) -> dict[int, Lease]:
        """Return {image_id: Lease} of the leases that have not expired at `now` (default: the clock)."""
        now = time.time() if now is None else now
        rows = self._conn.execute(
            "SELECT image_id, annotator, expires_at FROM leases WHERE expires_at > ? AND expires_at <= ?",
            (now, now + MAX_LEASE_SECONDS),
        )
        return {i: Lease(i, a, e) for i, a, e in rows}

    @staticmethod
    def _lease_of(c: sqlite3.Connection, image_id: int, now: float) -> Lease | None:
        row = c.execute(
            "SELECT annotator, expires_at FROM leases WHERE image_id = ? AND expires_at > ? AND expires_at <= ?",
            (image_id, now, now + MAX_LEASE_SECONDS),
        ).fetchone()
        return None if row is None else Lease(image_id, row[0], row[1])

    def _check_lease(self, c: sqlite3.Connection, image_id: int, annotator: str, now: float) -> None:
        held = self._lease_of(c, image_id, now)
        if held is not None and held.annotator != annotator:
            raise LeaseHeld(
                f"image id {image_id} is being labelled by {held.annotator!r} "
                f"(lease ends in {held.expires_at - now:.0f} s); nothing saved",
                held,
            )

    def take_lease(self, image_id: int, annotator: str, seconds: float, now: float | None = None) -> Lease:
        """Lease image `image_id` to `annotator` for `seconds` (renewing their own lease); return it.

        Raises LeaseHeld when another annotator's lease has not expired, StoreError for an unknown image or a
        length that is not a number of seconds in (0, MAX_LEASE_SECONDS].
        """
        now = time.time() if now is None else now
        image_id = int(image_id)
        seconds = check_lease_seconds(seconds)
        with self._write() as c:
            if self._unknown(c, [image_id]):
                raise StoreError(f"{self.folder}: no image with id {image_id}")
            self._check_lease(c, image_id, annotator, now)
            c.execute(
                "INSERT INTO leases (image_id, annotator, expires_at) VALUES (?, ?, ?) ON CONFLICT(image_id) "
                "DO UPDATE SET annotator = excluded.annotator, expires_at = excluded.expires_at",
                (image_id, annotator, now + float(seconds)),
            )
        return Lease(image_id, annotator, now + float(seconds))

    def release_lease(self, image_id: int, annotator: str) -> bool:
        """Give up `annotator`'s lease on the image; return whether there was one."""
        with self._write() as c:
            n = c.execute(
                "DELETE FROM leases WHERE image_id = ? AND annotator = ?", (int(image_id), annotator)
            ).rowcount
        return n > 0

    def _checked_round_image(
        self, c: sqlite3.Connection, image_id: int, round: int, annotator: str, revision: int | None,
        force: bool, now: float,
    ) -> tuple[str, int]:  # fmt: skip
        self._check_open(c, round, "nothing saved")
        item = c.execute(
            "SELECT i.state, i.revision FROM round_items ri JOIN images i ON i.id = ri.image_id "
            "WHERE ri.round_id = ? AND ri.image_id = ?",
            (int(round), image_id),
        ).fetchone()
        if item is None:
            raise StoreError(f"{self.folder}: image id {image_id} is not in round {round}")
        self._check_lease(c, image_id, annotator, now)
        if revision is not None and item[1] != revision and not force:
            raise LabelConflict(
                f"image id {image_id} was saved by someone else meanwhile (revision {item[1]}, this page "
                f"started from {revision}); nothing saved",
                item[1],
            )
        return item

    def save_labels(
        self,
        image_id: int,
        keypoints: Any,
        *,
        source: str,
        round: int,
        annotator: str,
        revision: int | None,
        force: bool = False,
        seconds: float | None = None,
        people: Sequence[tuple[float | None, int | None]] | None = None,
        now: float | None = None,
    ) -> SaveResult:
        """Store one image's labels from the labelling page in one transaction; return what changed.

        The image must belong to the open round `round`. Refused (nothing stored): another annotator holds
        its lease (LeaseHeld), its revision is not `revision` (LabelConflict: someone saved it meanwhile;
        `force` overwrites), or the labels are invalid (as `add_labels`). On success the annotator's lease is
        released and, when this was the round's last image, the round becomes 'labelled' in the same
        transaction. `people` holds (seconds, clicks) per person.
        """
        now = time.time() if now is None else now
        image_id = int(image_id)
        with self._write() as c:
            self._checked_round_image(c, image_id, round, annotator, revision, force, now)
            costs = None if people is None else {image_id: list(people)}
            written = self._add_labels(
                c, {image_id: keypoints}, source, round, seconds, None, annotator, costs
            )
            return self._saved(c, image_id, round, written.new_rows)

    def _saved(self, c: sqlite3.Connection, image_id: int, round: int, new_rows: int) -> SaveResult:
        """The end of a page save: the image's lease released, the round completed when it is done."""
        c.execute("DELETE FROM leases WHERE image_id = ?", (image_id,))
        completed = self._complete_round(c, int(round))
        state, rev = c.execute("SELECT state, revision FROM images WHERE id = ?", (image_id,)).fetchone()
        return SaveResult(new_rows, rev, state, completed)

    def skip_image(
        self, image_id: int, *, round: int, annotator: str, revision: int | None, force: bool = False,
        now: float | None = None,
    ) -> SaveResult:  # fmt: skip
        """Mark one queued image of the open round 'skipped' from the labelling page (rules of `save_labels`).

        An image that is already labelled is refused (its labels stay); skipping a skipped image is a no-op.
        """
        now = time.time() if now is None else now
        image_id = int(image_id)
        with self._write() as c:
            state, _ = self._checked_round_image(c, image_id, round, annotator, revision, force, now)
            if state == "labelled":
                raise StoreError(f"{self.folder}: image id {image_id} is labelled; it cannot be skipped")
            self._mark_skipped(c, [image_id])
            return self._saved(c, image_id, round, 0)
