"""Training TPSeNCE: unpaired clear -> rainy translation with TPS and SeNCE (see `objective.py`).

Adam (lr 2e-4, betas 0.5/0.999) for G, D and the MLP head, constant for `n_epochs` then linear
decay for `n_epochs_decay` (CUT's `linear` policy). Single process, or DDP under torchrun (env
vars RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; gloo on CPU, nccl on CUDA): the global batch is
split over ranks and gradients are averaged with an all-reduce after each backward (the
generator runs several partial forwards per step, which DistributedDataParallel's reducer does
not support), so the update is that of the global batch's mean loss whatever the number of
processes. bf16 autocast on CUDA; losses and the Sinkhorn plan are computed in fp32.

Resuming is exact: `last.pt` holds the three networks, the three optimisers and the position
(epoch, batch within the epoch), and every random draw (pairing, crops, flips, patch positions)
derives from (seed, epoch, sample index), so N steps straight and N/2 + resume + N/2 give
bit-identical weights on the CPU. SIGTERM and Ctrl-C are deferred to the end of the current step,
then a checkpoint is written and KeyboardInterrupt raised (a second Ctrl-C interrupts at once).

Outputs in `config.out`: `last.pt` (every epoch, on interruption, at `max_steps`), `train.log`
(JSON lines), `samples/step_NNNNNNN.png` (clear | generated | rainy, every `sample_every` steps),
`curves.png`, and at the end `generator.safetensors` (rainkit's format: `load_generator` and
`rainkit.hub.load_model("tpsence", path)` rebuild it from the file alone) with `generator.json`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rainkit._version import __version__
from rainkit.errors import RainkitError
from rainkit.train.distributed import leaves_process_group_as_found, setup_processes
from rainkit.train.data import epoch_order, rank_batch
from rainkit.io.atomic import atomic_save_figure, atomic_torch_save, atomic_write_json
from rainkit.train.runfiles import git_commit
from rainkit.tpsence.config import TPSeNCEConfig
from rainkit.tpsence.data import UnpairedDataset, sample_rng
from rainkit.tpsence.objective import TPSeNCE

CHECKPOINT = "last.pt"
GENERATOR = "generator.safetensors"
CARD = "generator.json"


@dataclass
class TPSeNCEResult:
    model: TPSeNCE
    out: Path
    global_step: int
    epoch: int
    history: list[dict] = field(default_factory=list)
    exported: Path | None = None


def lr_at(config: TPSeNCEConfig, epoch: int) -> float:
    """CUT's linear policy: lr for epochs 0..n_epochs-1, then 1 - k / (n_epochs_decay + 1) for the k-th decay epoch."""
    return config.lr * (1.0 - max(0, epoch + 1 - config.n_epochs) / float(config.n_epochs_decay + 1))


class _StopRequest:
    """Defers SIGTERM / SIGINT to a step boundary; a second SIGINT interrupts immediately."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _sync_grads(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Average gradients over ranks (one flat all-reduce); parameters without a gradient (the same
    on every rank, since every rank runs the same graph) are left alone."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def _to_uint8_image(t: torch.Tensor) -> np.ndarray:
    return ((t.detach().float().clamp(-1, 1).cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5).round().astype(np.uint8)


def _write_sample(path: Path, x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> None:
    from rainkit.data.images import write_image

    write_image(path, np.concatenate([_to_uint8_image(x), _to_uint8_image(fake), _to_uint8_image(y)], axis=1))


def _plot_curves(curve: list[dict], history: list[dict], path: Path) -> None:
    if not curve:
        return
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.4))
    axes = fig.subplots(1, 3)
    steps = [c["step"] for c in curve]
    for key in ("g", "gan", "nce", "tps"):
        if key in curve[0]:
            axes[0].plot(steps, [c[key] for c in curve], label=key)
    axes[0].set_title("generator terms (weighted)")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=7)
    for key in ("d", "d_real", "d_fake"):
        if key in curve[0]:
            axes[1].plot(steps, [c[key] for c in curve], label=key)
    axes[1].set_title("discriminator (LSGAN)")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=7)
    for key in ("score_rainy", "score_fake", "score_clear"):
        if key in curve[0]:
            axes[2].plot(steps, [c[key] for c in curve], label=key.replace("score_", "D("))
    axes[2].set_title("discriminator's mean score")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(path, fig)


def export_generator(model: TPSeNCE, config: TPSeNCEConfig, out_dir: Path, *, epoch: int, step: int,
                     history: list[dict], data_description: dict | None = None) -> Path:
    """Write `generator.safetensors` (rainkit format, fp16 with `export_fp16`) and its JSON card."""
    import copy

    from rainkit.hub.checkpoint import save_checkpoint
    from rainkit.hub.weights import sha256_file

    generator = model.generator
    if config.export_fp16:
        generator = copy.deepcopy(generator).half()
    kwargs = config.generator_kwargs()
    path = save_checkpoint(out_dir / GENERATOR, generator, "tpsence", kwargs,
                           extra={"rainkit.dtype": "fp16" if config.export_fp16 else "fp32"})
    card = {
        "arch": "tpsence",
        "arch_kwargs": kwargs,
        "file": GENERATOR,
        "sha256": sha256_file(path),
        "dtype": "fp16" if config.export_fp16 else "fp32",
        "parameters": sum(p.numel() for p in model.generator.parameters()),
        "task": "clear -> rainy image translation (TPSeNCE, WACV 2024); inputs/outputs RGB in [-1, 1]",
        "data": data_description or {},
        "epoch": epoch,
        "step": step,
        "last_epoch_losses": history[-1] if history else {},
        "config": config.to_dict(),
        "command": " ".join(sys.argv),
        "commit": git_commit(),
        "rainkit_version": __version__,
    }
    atomic_write_json(out_dir / CARD, card)
    return path


@leaves_process_group_as_found
def train_tpsence(
    config: TPSeNCEConfig,
    clear_images: Sequence[np.ndarray] | UnpairedDataset,
    target_images: Sequence[np.ndarray] | None = None,
    clear_labels: Sequence[np.ndarray] | None = None,
    target_labels: Sequence[np.ndarray] | None = None,
    *,
    resume: bool = False,
    on_step: Callable[[int, int, int, dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    data_description: dict | None = None,
) -> TPSeNCEResult:
    """Train TPSeNCE on unpaired uint8 RGB clear and rainy images with their semantic label maps.

    `clear_images` may also be a ready `UnpairedDataset` (then the other data arguments are
    ignored). Label maps (e.g. from `rainkit.tpsence.data.segment_images` with ESPNet) are needed
    for SeNCE; with `config.sence = False` they may be None (plain PatchNCE). Returns the trained
    networks; checkpoints and outputs go to `config.out`.
    """
    config.validate()
    if isinstance(clear_images, UnpairedDataset):
        dataset = clear_images
    else:
        if target_images is None:
            raise RainkitError("train_tpsence needs clear and rainy images")
        dataset = UnpairedDataset(clear_images, target_images, clear_labels, target_labels, crop=config.crop,
                                  load_size=config.load_size, flip=config.flip, seed=config.seed,
                                  samples_per_epoch=config.samples_per_epoch)
    if config.sence and config.lambda_nce > 0 and not dataset.has_labels:
        raise RainkitError("SeNCE needs semantic label maps of the clear and rainy images "
                           "(segment them with ESPNet), or set sence=false for plain PatchNCE")

    device, rank, world = setup_processes(config.device, config.batch)
    distributed = world > 1
    if len(dataset) < config.batch:
        raise RainkitError(f"{len(dataset)} samples per epoch is less than one batch of {config.batch}")
    out_dir = Path(config.out)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = TPSeNCE(config).to(device)
    use_amp = bool((config.amp and device.type == "cuda") or (config.cpu_bf16 and device.type == "cpu"))
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.lr, betas=betas)
    opt_f = torch.optim.Adam(model.head.parameters(), lr=config.lr, betas=betas)
    optimizers = (opt_g, opt_d, opt_f)

    epoch, start_batch, global_step = 0, 0, 0
    history: list[dict] = []
    curve: list[dict] = []
    checkpoint_path = out_dir / CHECKPOINT
    if resume:
        if not checkpoint_path.is_file():
            raise RainkitError(f"{checkpoint_path}: no checkpoint to resume from")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.generator.load_state_dict(state["generator"])
        model.discriminator.load_state_dict(state["discriminator"])
        model.head.load_state_dict(state["head"])
        for opt, key in zip(optimizers, ("opt_g", "opt_d", "opt_f")):
            opt.load_state_dict(state[key])
        epoch, start_batch, global_step = int(state["epoch"]), int(state["batch"]), int(state["global_step"])
        history = json.loads(state["history"])
        curve = json.loads(state["curve"])
    if distributed:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)

    def save(position_epoch: int, position_batch: int) -> None:
        if rank != 0:
            return
        atomic_torch_save(checkpoint_path, {
            "generator": model.generator.state_dict(), "discriminator": model.discriminator.state_dict(),
            "head": model.head.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "opt_f": opt_f.state_dict(), "epoch": position_epoch, "batch": position_batch,
            "global_step": global_step, "history": json.dumps(history), "curve": json.dumps(curve),
            "config": json.dumps(config.to_dict()),
        })

    def stop_everywhere(local: bool) -> bool:
        if not distributed:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    log = open(out_dir / "train.log", "a") if rank == 0 else None
    per_rank = config.batch // world
    rank_share = slice(rank * per_rank, (rank + 1) * per_rank)
    batches_per_epoch = len(dataset) // config.batch
    g_params = list(model.generator.parameters()) + list(model.head.parameters())
    d_params = list(model.discriminator.parameters())
    exported = None
    try:
        with _StopRequest() as stop:
            while epoch < config.epochs:
                lr = lr_at(config, epoch)
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = lr
                order = epoch_order(config.seed, epoch, len(dataset))
                sums: dict[str, float] = {}
                count = 0
                started = time.perf_counter()
                for b in range(start_batch, batches_per_epoch):
                    indices = rank_batch(order, b, config.batch, rank_share)
                    x, y, mpa = dataset.batch(indices, epoch)
                    x, y, mpa = x.to(device), y.to(device), mpa.to(device)
                    rngs_x = [sample_rng(config.seed, epoch, int(i), 1) for i in indices]
                    rngs_y = [sample_rng(config.seed, epoch, int(i), 2) for i in indices]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        fake, idt = model.translate(x, y)
                        # discriminator step
                        d_terms = model.discriminator_loss(fake, y)
                    opt_d.zero_grad(set_to_none=True)
                    d_terms["d"].backward()
                    if distributed:
                        _sync_grads(d_params, world)
                    opt_d.step()
                    # generator + head step, D frozen
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        g_terms = model.generator_loss(x, y, fake, idt, mpa, rngs_x, rngs_y)
                    opt_g.zero_grad(set_to_none=True)
                    opt_f.zero_grad(set_to_none=True)
                    g_terms["g"].backward()
                    if distributed:
                        _sync_grads(g_params, world)
                    opt_g.step()
                    opt_f.step()
                    global_step += 1
                    count += 1
                    values = {k: float(v.detach()) for k, v in {**g_terms, **d_terms}.items()}
                    values["mpa"] = float(mpa.mean())
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    position = (epoch, b + 1) if b + 1 < batches_per_epoch else (epoch + 1, 0)
                    if rank == 0 and (global_step % config.log_every == 0 or global_step == 1):
                        record = {"step": global_step, "epoch": epoch, "batch": b, "lr": lr,
                                  **{k: round(v, 6) for k, v in values.items()}}
                        curve.append(record)
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if rank == 0 and config.sample_every and global_step % config.sample_every == 0:
                        _write_sample(out_dir / "samples" / f"step_{global_step:07d}.png", x[0], fake[0], y[0])
                    if on_step:
                        on_step(global_step, b + 1, batches_per_epoch, values)
                    if config.max_steps and global_step >= config.max_steps:
                        epoch, start_batch = position
                        save(epoch, start_batch)
                        if rank == 0:
                            if config.plot_curves:
                                _plot_curves(curve, history, out_dir / "curves.png")
                            exported = export_generator(model, config, out_dir, epoch=epoch, step=global_step,
                                                        history=history, data_description=data_description)
                        return TPSeNCEResult(model, out_dir, global_step, epoch, history, exported)
                    if b + 1 < batches_per_epoch and stop_everywhere(stop.requested):
                        save(*position)
                        raise KeyboardInterrupt
                record = {"epoch": epoch + 1, "step": global_step, "lr": lr,
                          "seconds": round(time.perf_counter() - started, 2),
                          **{k: v / max(count, 1) for k, v in sums.items()}}
                history.append(record)
                epoch, start_batch = epoch + 1, 0
                save(epoch, 0)
                if rank == 0:
                    # a usable generator after every epoch, so an interrupted or still-running run can be tried
                    exported = export_generator(model, config, out_dir, epoch=epoch, step=global_step,
                                                history=history, data_description=data_description)
                    if config.plot_curves:
                        _plot_curves(curve, history, out_dir / "curves.png")
                if on_epoch:
                    on_epoch(record)
                if stop_everywhere(stop.requested):
                    raise KeyboardInterrupt  # the epoch's checkpoint is written
            if rank == 0 and exported is None:  # resumed after the last epoch: nothing trained, export anyway
                exported = export_generator(model, config, out_dir, epoch=epoch, step=global_step, history=history,
                                            data_description=data_description)
    finally:
        if log:
            log.close()
    return TPSeNCEResult(model, out_dir, global_step, epoch, history, exported)
