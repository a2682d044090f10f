"""How the application layer tells its caller what it is doing: one `Reporter` object, no terminal code.

The CLI passes a reporter that draws rich progress bars, the web page one that feeds its status endpoint,
tests and Python users the silent default. Every method is optional to override.
"""

from __future__ import annotations


class Reporter:
    """Silent by default; override what you want to show. Also serves as the trainer's callbacks."""

    def progress(self, stage: str, done: int, total: int | None, info: str = "") -> None:
        """`done` of `total` units of `stage` finished (total None: unknown)."""

    def note(self, text: str) -> None:
        """A line worth showing to the user (what was decided, what was written where)."""

    def counter(self, stage: str, total: int):
        """Return `advance(n)`: n more units of `stage` done, reported as a running total of `total`."""
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            self.progress(stage, done[0], total)

        return advance

    # training callbacks (see activepose.pose.train.TrainCallbacks)
    def on_epoch_start(self, session: int, epoch: int, num_batches: int) -> None:
        pass

    def on_batch_end(self, loss: float) -> None:
        pass

    def on_epoch_end(self, record, improved: bool) -> None:
        pass


SILENT = Reporter()
