"""The one trainer base: what every rainkit trainer does the same way.

A trainer (SAPNet's, TPSeNCE's) subclasses `Trainer` and gives `build` (networks, optimisers, losses),
`epoch_batches` and `train_step` (one optimiser step on one batch) and `state` / `load_state` (what
its checkpoint holds). The base runs the rest, as BasicSR's `BaseModel` does:

* processes: one, or DDP under torchrun (`setup_processes`), left as found at the end;
* the run folder `config.out`: `last.pt` (networks, optimisers and the position: epoch, batch within
  the epoch, step), `config.json` (the settings, read back by a resume), `train.log` (JSON lines),
  `curves.png` (matplotlib's `Figure` API, no pyplot state), and the run card the trainer exports;
* exact resume: every sample's randomness derives from (seed, epoch, index), so N steps straight and
  N/2 + resume + N/2 give bit-identical weights; a resume says which settings changed;
* stopping: SIGTERM and Ctrl-C are deferred to the end of the current step on every rank (the ranks
  agree with one all-reduce), then a checkpoint is written and KeyboardInterrupt raised (a second
  Ctrl-C interrupts at once); `max_steps` and `max_minutes` end the run with a checkpoint and an export.
"""

from __future__ import annotations

import abc
import json
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from rainkit._version import __version__
from rainkit.errors import RainkitError, UnsafeCheckpointError, first_line
from rainkit.io.atomic import atomic_save_figure, atomic_torch_save, atomic_write_json
from rainkit.train.config import CHECKPOINT, DATA_FILE, MEMORY_FORMATS, RUN_CONFIG
from rainkit.train.data import epoch_order
from rainkit.train.distributed import leaves_process_group_as_found, setup_processes
from rainkit.train.runfiles import git_commit

LOG = "train.log"
CURVES = "curves.png"
POSITION_KEYS = ("epoch", "batch", "global_step", "history", "config")
# Settings that a resume may change without it being news: where the run is, and how long it may go on.
QUIET_CHANGES = ("out", "max_steps", "max_minutes")


@dataclass
class TrainResult:
    model: torch.nn.Module
    out: Path
    global_step: int
    epoch: int
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # the epoch record of the exported weights, where the trainer keeps a best
    exported: Path | None = None  # the weights file the run exported last
    stopped: str | None = None  # "max_steps" or "max_minutes" when a budget ended the run
    changed: list[str] = field(default_factory=list)  # settings a resume changed, as "name old -> new"


@dataclass
class Panel:
    """One plot of `curves.png`: lines sharing an x axis."""

    title: str
    xlabel: str
    x: list
    lines: dict[str, list]


class StopRequest:
    """Defers SIGTERM / SIGINT to a step boundary; a second SIGINT interrupts immediately."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def read_training_checkpoint(path: Path, required: Iterable[str]) -> dict[str, Any]:
    """A trainer's `last.pt`, or one line saying why it cannot be resumed from."""
    hint = "start the run again without `resume`, or in a fresh folder"
    if not path.is_file():
        raise RainkitError(f"{path}: no checkpoint to resume from (is the run folder right?)")
    if path.stat().st_size == 0:
        raise RainkitError(f"{path}: the checkpoint is empty (0 bytes): {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = (str(exc).strip().splitlines() or ["unsupported object"])[0]
        raise UnsafeCheckpointError(
            f"{path}: refused, the checkpoint carries pickled objects that are not plain tensors "
            f"({first_line[:160]}); rainkit never unpickles arbitrary code, and its own checkpoints hold none") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise RainkitError(f"{path}: not a readable checkpoint, truncated or corrupt ({reason}): {hint}") from None
    missing = [key for key in (*POSITION_KEYS, *required) if not isinstance(state, dict) or key not in state]
    if missing:
        raise RainkitError(f"{path}: not a checkpoint of this trainer (missing {', '.join(missing)}): {hint}")
    return state


def load_network_state(module: torch.nn.Module, state: Any, source: Path, what: str) -> None:
    """Strictly load a network's state from a training checkpoint (mismatches name the keys)."""
    from rainkit.hub.checkpoint import load_state_dict_strict

    if not isinstance(state, dict):
        raise RainkitError(f"{source}: the checkpoint's {what} is not a state dict")
    load_state_dict_strict(module, state, f"{source} ({what})")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, source: Path, what: str) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise RainkitError(f"{source}: the checkpoint's {what} does not fit this run's network "
                           f"({first_line(exc, 120)})") from None


def _flat(settings: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(before: dict, after: dict) -> list[str]:
    """`name old -> new` for every setting that differs between two configs (as dicts)."""
    old, new = _flat(before), _flat(after)
    return [f"{key} {_show(old[key])} -> {_show(new[key])}" for key in new
            if key in old and old[key] != new[key] and key not in QUIET_CHANGES]


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


class Trainer(abc.ABC):
    """The training loop, checkpoints, log, curves, stopping and DDP; subclasses give the model.

    The config must have `out`, `device`, `seed`, `batch`, `epochs`, `max_steps`, `max_minutes`,
    `log_every`, `plot_curves` and `to_dict()` (`TrainConfig` and `TPSeNCEConfig` do)."""

    value_prefix = ""  # prefix of the loss names in log and epoch records ("loss_" for SAPNet)
    state_keys: tuple[str, ...] = ()  # the keys `state` adds to the checkpoint, required on resume
    model: torch.nn.Module  # set by `build`; what `TrainResult.model` returns
    optimizers: list[torch.optim.Optimizer]  # set by `build`; the base sets their learning rate every epoch

    def __init__(self, config, dataset, *, data_description: dict | None = None, run_data: dict | None = None):
        self.config = config
        self.dataset = dataset
        self.data_description = data_description
        self.run_data = run_data  # the data arguments of the run, kept as data.json for a resume
        self.best: dict | None = None
        self.exported: Path | None = None
        self.history: list[dict] = []
        self.curve: list[dict] = []
        self.epoch = 0
        self.global_step = 0
        # The code that trains is the checkout's at the start: HEAD may move on while a long run goes.
        self.commit = git_commit()

    def autocast_enabled(self) -> bool:
        """bf16 autocast for this run: `amp` on CUDA, `cpu_bf16` on the CPU (with a warning where this CPU emulates
        bf16)."""
        from rainkit.hub.device import warn_if_bf16_emulated

        c = self.config
        if self.device.type == "cpu" and c.cpu_bf16:
            warn_if_bf16_emulated(self.device, "cpu_bf16")
        return bool((c.amp and self.device.type == "cuda") or (c.cpu_bf16 and self.device.type == "cpu"))

    def channels_last_enabled(self, auto: bool) -> bool:
        """Channels-last networks and batches for this run: the config's `memory_format` (`channels_last` or
        `contiguous`) forces one; `auto` leaves it to the calling trainer's default, given as `auto`. The results
        agree to rounding."""
        choice = self.config.memory_format
        if choice not in MEMORY_FORMATS:
            raise RainkitError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {choice}")
        return choice == "channels_last" or (choice == "auto" and auto)

    # ------------------------------------------------------------------ what a trainer gives
    @abc.abstractmethod
    def build(self) -> None:
        """Networks (`self.model`), optimisers (`self.optimizers`) and loss terms on `self.device`."""

    @abc.abstractmethod
    def distribute(self) -> None:
        """Make the ranks start from rank 0's weights and average their gradients (after a resume)."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """The networks' and optimisers' states (and anything else the trainer resumes from)."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, Any], source: Path) -> None:
        """Restore `state` from the checkpoint `source`; a mismatch is a one-line error naming it."""

    @abc.abstractmethod
    def lr_at(self, epoch: int) -> float:
        """The learning rate of every optimiser during `epoch`."""

    @abc.abstractmethod
    def batches_per_epoch(self) -> int:
        """Optimiser steps in one epoch."""

    @abc.abstractmethod
    def epoch_batches(self, epoch: int, order, first: int, count: int, rank_slice: slice) -> Iterable:
        """This rank's batches `first` .. `count` - 1 of the epoch drawn as `epoch` (`data_epoch`), in `order`."""

    @abc.abstractmethod
    def train_step(self, batch, epoch: int) -> dict[str, float]:
        """One optimiser step of a batch of the epoch drawn as `epoch` (`data_epoch`); returns the step's loss terms
        (and diagnostics) as floats."""

    def data_epoch(self, epoch: int) -> int:
        """The epoch number that seeds `epoch`'s sample order and per-sample draws (crops, flips, patches)."""
        return epoch

    def after_step(self, batch) -> None:
        """Rank 0, after every step (e.g. sample grids)."""

    def end_epoch(self, record: dict) -> None:
        """Rank 0, after every epoch (`record` is the last of `history`): validate into it, export."""

    def export(self) -> None:
        """Rank 0, when a budget ends the run within an epoch, or a resume finds it finished and nothing
        exported: export what was trained so far."""

    def curve_panels(self) -> list[Panel]:
        """The plots of `curves.png`."""
        return []

    # ------------------------------------------------------------------ shared pieces
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def run_card(self, **fields: Any) -> dict[str, Any]:
        """A run card: the trainer's fields, then what every card records."""
        return {**fields, "data": self.data_description or {}, "config": self.config.to_dict(),
                "command": " ".join(sys.argv), "commit": self.commit, "rainkit_version": __version__}

    def save(self, epoch: int, batch: int) -> None:
        if self.rank != 0:
            return
        atomic_torch_save(self.checkpoint_path, {
            **self.state(), "epoch": epoch, "batch": batch, "global_step": self.global_step,
            "history": json.dumps(self.history), "curve": json.dumps(self.curve),
            "config": json.dumps(self.config.to_dict()),
        })

    def plot_curves(self) -> None:
        if self.rank != 0 or not self.config.plot_curves:
            return
        panels = [p for p in self.curve_panels() if p.x and p.lines]
        if not panels:
            return
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5 * max(2, len(panels)), 3.3))
        axes = fig.subplots(1, max(2, len(panels)))
        for ax, panel in zip(axes, panels):
            for label, values in panel.lines.items():
                ax.plot(panel.x, values, label=label)
            ax.set_title(panel.title)
            ax.set_xlabel(panel.xlabel)
            if len(panel.lines) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_save_figure(self.out / CURVES, fig)

    def _stop_reason(self, stop: StopRequest, started: float) -> str | None:
        """Why the run stops after this step, the same on every rank: "signal", a budget, or None."""
        c = self.config
        flags = [1.0 if stop.requested else 0.0,
                 1.0 if c.max_minutes and time.monotonic() - started >= 60.0 * c.max_minutes else 0.0]
        if self.world > 1:
            tensor = torch.tensor(flags, device=self.device)
            dist.all_reduce(tensor)
            flags = tensor.tolist()
        if flags[0] > 0:
            return "signal"
        if c.max_steps and self.global_step >= c.max_steps:
            return "max_steps"
        if flags[1] > 0:
            return "max_minutes"
        return None

    def _resume(self, on_resume: Callable[[list[str]], None] | None) -> tuple[int, list[str]]:
        state = read_training_checkpoint(self.checkpoint_path, self.state_keys)
        try:
            saved_config = json.loads(state["config"])
            self.history = json.loads(state["history"])
            self.curve = json.loads(state.get("curve") or "[]")
        except (TypeError, ValueError):
            raise RainkitError(f"{self.checkpoint_path}: the run's records in the checkpoint are corrupt") from None
        self.load_state(state, self.checkpoint_path)
        self.epoch, batch, self.global_step = int(state["epoch"]), int(state["batch"]), int(state["global_step"])
        changed = changed_settings(saved_config, self.config.to_dict())
        old_batch = int(saved_config.get("batch", self.config.batch))
        if old_batch != self.config.batch and batch:
            # The position within the epoch is kept in samples; the batches that follow differ from the old run's.
            batch = batch * old_batch // self.config.batch
            changed.append(f"the run continues at batch {batch} of epoch {self.epoch + 1} (same samples done)")
        if on_resume and self.rank == 0:
            on_resume(changed)
        return batch, changed

    @leaves_process_group_as_found
    def run(self, *, resume: bool = False, on_step: Callable[[int, int, int, dict], None] | None = None,
            on_epoch: Callable[[dict], None] | None = None,
            on_resume: Callable[[list[str]], None] | None = None) -> TrainResult:
        """Train from scratch or, with `resume`, from `last.pt` in `config.out`. `on_step(step, batch,
        batches, values)` and `on_epoch(record)` report progress; `on_resume(changes)` is told which
        settings differ from the run's."""
        c = self.config
        self.device, self.rank, self.world = setup_processes(c.device, c.batch)
        self.out = Path(c.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(c.seed)
        self.build()
        start_batch, changed = self._resume(on_resume) if resume else (0, [])
        self.distribute()
        if self.rank == 0:
            atomic_write_json(self.out / RUN_CONFIG, c.to_dict())
            if self.run_data is not None:
                atomic_write_json(self.out / DATA_FILE, self.run_data)
        per_rank = c.batch // self.world
        rank_slice = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        per_epoch = self.batches_per_epoch()
        started = time.monotonic()
        log = open(self.out / LOG, "a") if self.rank == 0 else None
        try:
            with StopRequest() as stop:
                while self.epoch < c.epochs:
                    epoch = self.epoch
                    lr = self.lr_at(epoch)
                    for optimizer in self.optimizers:
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    drawn = self.data_epoch(epoch)
                    order = epoch_order(c.seed, drawn, len(self.dataset))
                    sums: dict[str, float] = {}
                    count = 0
                    epoch_started = time.perf_counter()
                    for b, batch in enumerate(self.epoch_batches(drawn, order, start_batch, per_epoch, rank_slice),
                                              start_batch):
                        values = self.train_step(batch, drawn)
                        self.global_step += 1
                        count += 1
                        for key, value in values.items():
                            sums[key] = sums.get(key, 0.0) + value
                        if log and (self.global_step % c.log_every == 0 or self.global_step == 1):
                            record = {"step": self.global_step, "epoch": epoch, "batch": b, "lr": lr,
                                      **{f"{self.value_prefix}{k}": round(v, 6) for k, v in values.items()}}
                            self.curve.append(record)
                            log.write(json.dumps(record) + "\n")
                            log.flush()
                        if self.rank == 0:
                            self.after_step(batch)
                        if on_step:
                            on_step(self.global_step, b + 1, per_epoch, values)
                        if b + 1 < per_epoch:
                            reason = self._stop_reason(stop, started)
                            if reason:
                                self.save(epoch, b + 1)
                                return self._stopped(reason, changed)
                    record = {"epoch": epoch + 1, "step": self.global_step, "lr": lr,
                              "seconds": round(time.perf_counter() - epoch_started, 2),
                              **{f"{self.value_prefix}{k}": v / max(count, 1) for k, v in sums.items()}}
                    self.history.append(record)
                    self.epoch, start_batch = epoch + 1, 0
                    if self.rank == 0:
                        self.end_epoch(record)
                    self.save(self.epoch, 0)
                    self.plot_curves()
                    if on_epoch:
                        on_epoch(record)
                    reason = self._stop_reason(stop, started)
                    if reason:
                        return self._stopped(reason, changed, exported=True)
                if self.rank == 0 and self.exported is None:  # resumed after the last epoch: export anyway
                    self.export()
        finally:
            if log:
                log.close()
        return self._result(None, changed)

    def _stopped(self, reason: str, changed: list[str], exported: bool = False) -> TrainResult:
        if reason == "signal":
            raise KeyboardInterrupt  # the checkpoint is written
        if self.rank == 0 and not exported:
            self.plot_curves()
            self.export()
        return self._result(reason, changed)

    def _result(self, stopped: str | None, changed: list[str]) -> TrainResult:
        return TrainResult(self.model, self.out, self.global_step, self.epoch, self.history, self.best,
                           self.exported, stopped, changed)
