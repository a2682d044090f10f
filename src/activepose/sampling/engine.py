"""Where pool scoring runs: in this process (`local`) or on a Ray cluster (`ray`, Ray Data).

Scoring the pool — the pose model's per-image statistics (`uncertainty.scan_pool`: heatmap peaks, the signals
of `signals`) and the ImageNet embeddings (`features.extract_features`) — is the per-round cost that grows with
the pool. Both split the images that are not in their cache into batches and hand them to an engine:

- `LocalEngine` (the default) computes nothing itself: the callers keep their own in-process loop (image reading
  overlapped with the network by threads).
- `RayEngine` maps the batches with Ray Data: `map_batches` over an actor pool whose actors each hold one copy of
  the worker (the model or extractor and how to read an image), one GPU per actor when the cluster has GPUs
  (else CPU threads: the driver's thread count per actor, as many actors as the cluster's CPUs allow). Results
  come back to the driver, which alone writes them to the same caches, under the same keys, a batch at a time:
  the local engine then finds everything there and the selection is the one it would have made. Batches are
  the local engine's (consecutive images, the same batch size), so on the same hardware the numbers are equal.

A worker that dies is restarted by Ray and its batch retried (Ray Data's actor-pool fault tolerance); if the
retries are exhausted the run fails with one `EnvironmentProblem` naming the engine, and only batches that came
back whole have been written to the cache. Without an address a local Ray is started on 127.0.0.1 when the
first batch is mapped and shut down by `close()` (a selection closes its engine when it ends); with `ray_address` (e.g. `ray://head:10001` or `auto`) the running cluster is
used and left running. Ray is an optional extra: `pip install activepose[ray]`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, EnvironmentProblem

ENGINES = ("local", "ray")


class _WorkerFailed(Exception):
    """A worker's own error (not a lost worker): reported as it is, never retried."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LocalEngine:
    """Scoring in this process (the callers' own loops)."""

    name = "local"
    remote = False

    def close(self) -> None:
        pass


class _RayActor:
    """One actor of the pool: holds the worker; maps one batch (a list of image paths) to its values."""

    def __init__(self, worker: Callable[[list[str]], np.ndarray], threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.worker = worker
        if hasattr(worker, "setup"):
            worker.setup()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys, blobs, shapes, errors = [], [], [], []
        for k, paths in zip(batch["k"], batch["paths"], strict=True):
            try:
                out = np.ascontiguousarray(self.worker([str(p) for p in paths]), dtype=np.float32)
                error = ""
            except Exception as exc:  # e.g. an unreadable image: its message names the file
                out, error = np.zeros((0,), np.float32), f"{type(exc).__name__}: {exc}"
            keys.append(int(k))
            blobs.append(out.tobytes())
            shapes.append(list(out.shape))
            errors.append(error)
        return {"k": np.asarray(keys, np.int64), "values": blobs, "shape": shapes, "error": errors}


@dataclass
class RayEngine:
    """Pool scoring with Ray Data (see the module docstring)."""

    address: str | None = None  # None: start a local Ray on 127.0.0.1 for the call
    actors: int | None = None  # None: one per GPU, else cluster CPUs // threads
    threads: int | None = None  # CPU threads per actor (None: this process's torch threads)
    # a dead actor is restarted and its batch retried this often (Ray Data's default: forever)
    retries: int = 3
    name: ClassVar[str] = "ray"
    remote: ClassVar[bool] = True
    started: bool = False  # this engine started the Ray it uses (close() shuts it down)

    def _connect(self) -> bool:
        """Connect (or start a local Ray) unless connected; return whether this call started it."""
        try:
            import ray
        except ImportError:
            raise EnvironmentProblem(
                "--engine ray needs Ray: pip install 'activepose[ray]' (or 'ray[data]')"
            ) from None
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(
                    address="local", _node_ip_address="127.0.0.1", num_cpus=_usable_cpus(),
                    **kwargs,
                )  # fmt: skip
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
            where = self.address or "a local Ray on 127.0.0.1"
            raise EnvironmentProblem(f"--engine ray: cannot start or reach {where}: {exc}") from None
        return True

    def map(
        self, worker: Callable[[list[str]], np.ndarray], batches: Sequence[Sequence[str]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (batch index, float32 values) for every batch of image paths, in any order."""
        import ray
        import torch

        if not batches:
            return
        self.started |= self._connect()
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.verbose_progress = False
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            # an actor runs on one node: no more threads than the smallest node has CPUs
            node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
            per_node = min((c for c in node_cpus if c > 0), default=1)
            threads = max(1, min(self.threads or torch.get_num_threads(), per_node))
            actors = self.actors or (gpus if gpus else max(1, int(resources.get("CPU", 1)) // threads))
            actors = max(1, min(actors, len(batches)))
            items = [{"k": k, "paths": [str(p) for p in b]} for k, b in enumerate(batches)]
            ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors))
            with warnings.catch_warnings():  # Ray's notices on its own API's future, not the user's business
                warnings.simplefilter("ignore")
                mapped = ds.map_batches(
                    _RayActor, fn_constructor_kwargs={"worker": worker, "threads": threads}, batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                    num_gpus=1 if gpus else 0, batch_format="numpy",
                    ray_remote_args_fn=lambda: {"max_restarts": self.retries, "max_task_retries": self.retries},
                )  # fmt: skip
            seen = set()
            try:
                for row in mapped.iter_rows():
                    k = int(row["k"])
                    if row["error"]:
                        raise _WorkerFailed(f"--engine ray: batch {k} failed on a worker: {row['error']}")
                    if k in seen:
                        continue
                    seen.add(k)
                    shape = tuple(int(s) for s in row["shape"])
                    yield k, np.frombuffer(row["values"], np.float32).reshape(shape).copy()
            except _WorkerFailed as exc:
                raise EnvironmentProblem(
                    f"{exc}; {len(seen)} of {len(batches)} batches were scored and cached"
                ) from None
            except Exception as exc:
                raise EnvironmentProblem(
                    f"--engine ray: scoring failed after retries ({type(exc).__name__}: {str(exc)[:300]}); "
                    f"{len(seen)} of {len(batches)} batches were scored and cached"
                ) from None
            if len(seen) != len(batches):
                raise EnvironmentProblem(
                    f"--engine ray: {len(batches) - len(seen)} of {len(batches)} batches never came back"
                )
        except BaseException:
            self.close()  # a failed or interrupted scoring leaves no Ray behind
            raise

    def close(self) -> None:
        """Shut down the local Ray this engine started (a cluster given by address is only disconnected)."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def create_engine(name: str = "local", address: str | None = None) -> LocalEngine | RayEngine:
    """Return the engine called `name` (`local` or `ray`); `address` is Ray's (None: a local Ray per call)."""
    if name == "local":
        if address:
            raise ConfigError("--ray-address is for --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address=address)
    raise ConfigError(f"unknown --engine {name!r}: use one of {', '.join(ENGINES)}")
