"""The application layer: what a user does with a project, as plain functions (no terminal, no web).

Each function takes a `Project` (or a folder), config objects and a `Reporter`, stores its outcome in one
transaction and raises an `activepose.errors.ActiveposeError` subclass for every user or state mistake.
The CLI (`activepose.commands`), the loop (`activepose.loop.run`), the labelling page and the simulation all
call these, so none of them holds application logic of its own.
"""

from ..config import EvalOptions, SelectOptions
from ..oracle.files import FileLabeller
from ..oracle.simulated import SimulatedLabeller
from .create import CreatedProject, ProjectSource, create_project
from .curve import learning_curve, write_learning_curve
from .presets import PRESETS, resolve_train_config
from .reporting import SILENT, Reporter
from .rounds import close_round, evaluate_round, label_round, select_round, train_round

__all__ = [
    "PRESETS",
    "SILENT",
    "CreatedProject",
    "EvalOptions",
    "FileLabeller",
    "ProjectSource",
    "Reporter",
    "SelectOptions",
    "SimulatedLabeller",
    "close_round",
    "create_project",
    "evaluate_round",
    "label_round",
    "learning_curve",
    "resolve_train_config",
    "select_round",
    "train_round",
    "write_learning_curve",
]
