"""results.csv: its one schema (columns, types, how each is written), its one reader and its one writer.

One row per (strategy, seed, round, test set, TTA); round 0 is the initial model, shared by every strategy of a
seed. `labelled_images` / `labelled_people` are the training set after the round (initial labels included);
`annotation_seconds` is the simulated labelling time of the labels added by rounds 1..r (the initial set counts
0 for every strategy); `selection_seconds` (the round's selection, as stored with the round) and
`training_seconds` (the epochs of the round's training session, from the run's history) are the round's own
times, and the only values that depend on the machine and on interruptions (an epoch cut by a crash is not
counted); `test_set` is the test file's stem; count_acc, count_exact, AP and PCK are fractions in [0, 1], empty
when undefined. `schedule_images` is the labelled-set size the round's training schedule was sized for (its
step cap, `TrainConfig.steps_per_image`): the labels themselves, except for the `static` compute control, which
trains its initial set with the schedule the other arms get; `train_steps`, `train_stop` and `model_kept` are
the round's training session (batches, why it stopped, "new" or "previous": see `pose.train.read_sessions`).
The diagnostic columns (`test_spearman`, `test_auroc`, `batch_spearman`, `batch_auroc`, `pass_rate`, `coverage`,
`videos`: kind "stat", 4 decimals) say why a strategy won or lost (see `diagnostics.py`); empty where they do
not apply (the static arm, round 0's batch, a strategy without an uncertainty filter, stills).

The grid (`grid.py`) writes rows with `row_text` and `write_results`; everyone reads them with `load_results`,
which is lenient (a report is drawn on a grid still running, or on a results.csv from elsewhere); the grid,
which rewrites the whole file, first refuses one it could not write back as it is (`check_rewritable`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TTA_NAMES
from ..errors import ConfigError
from ..fileio import atomic_write_bytes

# Each column's kind: "text"; "int" (a key, always a whole number); "count" (a whole number, read as a float
# so that an empty cell is NaN); "seconds" (written with 3 decimals); "fraction" (a metric, 6 decimals); "stat"
# (a diagnostic, 4 decimals).
SCHEMA: dict[str, str] = {
    "strategy": "text", "seed": "int", "round": "int", "labelled_images": "count", "labelled_people": "count",
    "annotation_seconds": "seconds", "selection_seconds": "seconds", "training_seconds": "seconds",
    "test_set": "text", "tta": "text", "count_acc": "fraction", "count_exact": "fraction", "AP": "fraction",
    "PCK": "fraction", "schedule_images": "count", "train_steps": "count", "train_stop": "text",
    "model_kept": "text", "test_spearman": "stat", "test_auroc": "stat", "batch_spearman": "stat",
    "batch_auroc": "stat", "pass_rate": "stat", "coverage": "stat", "videos": "count",
}  # fmt: skip
COLUMNS = tuple(SCHEMA)
# Columns added since the first results.csv: a file without them is read (as NaN / "") and written back whole.
LATER_COLUMNS = ("schedule_images", "train_steps", "train_stop", "model_kept", "test_spearman", "test_auroc",
                 "batch_spearman", "batch_auroc", "pass_rate", "coverage", "videos")  # fmt: skip
KEY_COLUMNS = ("strategy", "seed", "round", "test_set", "tta")
INFO_COLUMNS = tuple(c for c in COLUMNS if SCHEMA[c] == "text" and c not in KEY_COLUMNS)
NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in KEY_COLUMNS and c not in INFO_COLUMNS)
METRIC_COLUMNS = tuple(c for c, kind in SCHEMA.items() if kind == "fraction")
TIMING_COLUMNS = ("selection_seconds", "training_seconds")  # the values that depend on the machine
_DECIMALS = {"seconds": 3, "fraction": 6, "stat": 4}


# --- writing -------------------------------------------------------------------------------------------------
def row_text(values: Mapping[str, Any]) -> dict[str, str]:
    """One row as results.csv holds it: every column of `SCHEMA` written as its kind says ("" when absent,
    None or NaN)."""
    row = {}
    for column, kind in SCHEMA.items():
        value = values.get(column)
        if value is None:
            row[column] = ""
        elif kind == "text":
            row[column] = str(value)
        elif kind in ("int", "count"):
            row[column] = str(int(value))
        else:
            value = float(value)
            row[column] = "" if math.isnan(value) else f"{value:.{_DECIMALS[kind]}f}"
    return row


def write_results(
    path: str | Path,
    rows: Iterable[Mapping[str, str]],
    strategies: Sequence[str] = (),
    test_sets: Sequence[str] = (),
    ttas: Sequence[str] = (),
) -> Path:
    """Write results.csv atomically: its header, then the text rows (see `row_text`) sorted by strategy, seed,
    round, test set and TTA, strategies, test sets and TTAs in the given orders (others after them)."""
    order = {
        "strategy": {s: i for i, s in enumerate(strategies)},
        "test_set": {t: i for i, t in enumerate(test_sets)},
        "tta": {t: i for i, t in enumerate(ttas)},
    }
    rows = sorted(rows, key=lambda row: (order["strategy"].get(row["strategy"], 99), int(row["seed"]),
                                         int(row["round"]), order["test_set"].get(row["test_set"], 99),
                                         order["tta"].get(row["tta"], 99)))  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode())


# --- reading -------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """The rows of a results.csv: `rows[i]` maps every column of `COLUMNS` to a value, `text[i]` to its cell.

    In `rows`, strategy / test_set / tta are strings, seed and round ints, every other column a float (NaN
    when the cell is empty or missing); `text` holds the same rows' cells as read, for writing them back.
    `columns` is the file's header; `skipped` counts malformed lines (e.g. a half-written last line of a grid
    still running); a repeated key keeps its last row.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    columns: tuple[str, ...] = COLUMNS
    text: list[dict[str, str]] = field(default_factory=list)
    _index: dict[tuple, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self._index:
            self._index = {tuple(r[k] for k in KEY_COLUMNS): r for r in self.rows}

    def get(self, strategy: str, seed: int, round_: int, test_set: str, tta: str) -> dict[str, Any] | None:
        return self._index.get((strategy, seed, round_, test_set, tta))

    def value(self, strategy: str, seed: int, round_: int, test_set: str, tta: str, column: str) -> float:
        row = self.get(strategy, seed, round_, test_set, tta)
        return float("nan") if row is None else row[column]

    def strategies(self) -> list[str]:
        return sorted({r["strategy"] for r in self.rows})

    def seeds(self, strategy: str | None = None) -> list[int]:
        return sorted({r["seed"] for r in self.rows if strategy is None or r["strategy"] == strategy})

    def rounds(self, strategy: str | None = None) -> list[int]:
        return sorted({r["round"] for r in self.rows if strategy is None or r["strategy"] == strategy})

    def test_sets(self) -> list[str]:
        return sorted({r["test_set"] for r in self.rows})

    def ttas(self, test_set: str | None = None) -> list[str]:
        found = {r["tta"] for r in self.rows if test_set is None or r["test_set"] == test_set}
        return sorted(found, key=lambda t: (TTA_NAMES.index(t) if t in TTA_NAMES else len(TTA_NAMES), t))


def _float(text: str | None) -> float:
    if text is None:
        return float("nan")
    text = text.strip()
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _int(text: str | None) -> int:
    value = float((text or "").strip())  # "3" and "3.0" both; raises ValueError on junk / empty
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


def _parse(raw: Mapping[str, str]) -> dict[str, Any] | None:
    """The typed row of one line (see `Results`), or None when it lacks a key."""
    try:
        row: dict[str, Any] = {
            "strategy": raw["strategy"].strip(),
            "seed": _int(raw["seed"]),
            "round": _int(raw["round"]),
            "test_set": (raw.get("test_set") or "test").strip(),
            "tta": (raw.get("tta") or "clean").strip(),
        }
    except ValueError:
        return None
    if not row["strategy"] or row["round"] < 0:
        return None
    for col in NUMBER_COLUMNS:
        row[col] = _float(raw.get(col))
    for col in INFO_COLUMNS:
        row[col] = (raw.get(col) or "").strip()
    return row


def load_results(path: str | Path) -> Results:
    """Parse a results.csv (see `Results`); raises FileNotFoundError when it does not exist, ConfigError (a
    ValueError) when it has no strategy, seed or round column.

    Columns are found by name (extra columns are ignored, missing number columns read as NaN); a line
    without a strategy, an integer seed and round, a test set and a TTA is skipped and counted.
    """
    path = Path(path)
    found: dict[tuple, tuple[dict[str, Any], dict[str, str]]] = {}
    skipped = 0
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("strategy", "seed", "round") if c not in header]
        if missing and header:
            raise ConfigError(f"{path}: results.csv lacks the column(s) {', '.join(missing)}")
        reader.fieldnames = header
        for raw in reader:
            complete = None not in raw and all(
                raw.get(c) is not None for c in header
            )  # no field too many / few
            row = _parse(raw) if complete else None
            if row is None:
                skipped += 1
                continue
            # the last row of a repeated key wins
            found[tuple(row[k] for k in KEY_COLUMNS)] = (row, {c: raw.get(c) or "" for c in COLUMNS})
    rows = [row for row, _ in found.values()]
    return Results(rows, skipped, tuple(header), [text for _, text in found.values()])


def check_rewritable(results: Results, path: str | Path) -> None:
    """Raise ConfigError unless the grid can write `results` back to `path` losing nothing: the header is
    `COLUMNS`, or `COLUMNS` without some of the columns added since (`LATER_COLUMNS`: a file an older version
    wrote), and no line was skipped."""
    header = results.columns
    in_order = header == tuple(c for c in COLUMNS if c in header)
    if not (in_order and set(COLUMNS) - set(header) <= set(LATER_COLUMNS)):
        raise ConfigError(
            f"{path}: unexpected columns {list(results.columns)}; expected {', '.join(COLUMNS)}"
        )
    if results.skipped:
        raise ConfigError(
            f"{path}: {results.skipped} malformed line(s); the grid rewrites this file and would drop them"
        )
