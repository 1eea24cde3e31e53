"""Training SAPNet (or any registered derain network) as the SAPNet paper describes.

Losses: negative SSIM, perceptual contrastive (VGG-16), LPIPS, background-segmentation focal
loss, each weighted and switchable. Adam with step decay at the milestones. Single process, or
DDP under torchrun (gloo on CPU, nccl on CUDA): the global batch is split over ranks and DDP
averages gradients, so nothing depends on the number of processes.

Resuming is exact: the checkpoint holds the model, the optimiser and the position (epoch, batch
within the epoch), and every sample's randomness derives from (seed, epoch, index), so
N steps straight and N/2 + resume + N/2 give bit-identical weights on the CPU.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rainkit._version import __version__
from rainkit.errors import RainkitError
from rainkit.train.distributed import leaves_process_group_as_found, setup_processes
from rainkit.io.atomic import atomic_save_figure, atomic_torch_save, atomic_write_json
from rainkit.train.runfiles import git_commit
from rainkit.hub import create_model
from rainkit.hub.checkpoint import save_checkpoint
from rainkit.losses.ssim import SSIMLoss
from rainkit.train.config import TrainConfig
from rainkit.train.data import EpochBatches, PatchDataset, epoch_loader, epoch_order, resolve_workers

CHECKPOINT = "last.pt"
BEST = "best.safetensors"


@dataclass
class TrainResult:
    model: torch.nn.Module
    out: Path
    global_step: int
    epoch: int
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    interrupted: bool = False


def build_loss_terms(config: TrainConfig, device: torch.device) -> dict[str, tuple[float, Callable]]:
    """Build every enabled loss once. Terms needing ImageNet/LPIPS/segmenter weights fail here,
    before training starts, with the path to give or the setting that switches them off."""
    from rainkit.losses.perceptual import (ContrastiveLoss, LPIPSLoss, SegmentationFocalLoss, VGGFeatures,
                                           load_lpips_linear, load_vgg16_features)

    weights = config.loss
    terms: dict[str, tuple[float, Callable]] = {}
    if weights.ssim:
        ssim_loss = SSIMLoss()
        terms["ssim"] = (weights.ssim, lambda out, clean, rainy: ssim_loss(out, clean))
    if weights.l1:
        terms["l1"] = (weights.l1, lambda out, clean, rainy: torch.nn.functional.l1_loss(out.float(), clean.float()))
    if weights.contrastive or weights.lpips:
        trunk = load_vgg16_features(config.vgg_weights)
        if weights.contrastive:
            contrastive = ContrastiveLoss(VGGFeatures(trunk)).to(device)
            terms["contrastive"] = (weights.contrastive, contrastive)
        if weights.lpips:
            lpips = LPIPSLoss(VGGFeatures(trunk, ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")),
                              load_lpips_linear(config.lpips_weights)).to(device)
            terms["lpips"] = (weights.lpips, lambda out, clean, rainy: lpips(out, clean))
    if weights.segmentation:
        focal = SegmentationFocalLoss(load_segmenter(config.segmenter_weights)).to(device)
        terms["segmentation"] = (weights.segmentation, lambda out, clean, rainy: focal(out, clean))
    if not terms:
        raise RainkitError("every loss weight is 0: nothing to train")
    return terms


class _Segmenter(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        from rainkit.losses.perceptual import IMAGENET_MEAN, IMAGENET_STD

        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)["out"]


def load_segmenter(path: str | None = None) -> torch.nn.Module:
    """torchvision's DeepLabV3-MobileNetV3 with verified weights: `path` (a state dict file or a registered
    name), else the registered `deeplabv3_mobilenet_v3_large.coco-voc`; never downloads."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from rainkit.hub.checkpoint import load_state_dict_strict, read_state_dict
    from rainkit.hub.weights import resolve_auxiliary

    resolved = resolve_auxiliary(path, SEGMENTER_WEIGHTS, "--segmenter-weights", "--set loss.segmentation=0")
    state = read_state_dict(resolved.path)
    net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                       aux_loss=any(k.startswith("aux_classifier") for k in state))
    load_state_dict_strict(net, state, resolved.path)
    return _Segmenter(net)


SEGMENTER_WEIGHTS = "deeplabv3_mobilenet_v3_large.coco-voc"  # registered in rainkit/models/auxiliary.py


def lr_at(config: TrainConfig, epoch: int) -> float:
    return config.lr * config.gamma ** sum(1 for m in config.milestones if epoch >= m)


def validate(model: torch.nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> dict[str, float]:
    """Mean psnr_y/ssim_y (MATLAB convention, truncated 8-bit outputs) over (rainy, clean) uint8 images."""
    from rainkit.data.images import to_uint8
    from rainkit.metrics.fullref import full_reference_scores

    scores = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rainy, clean in pairs:
            x = torch.from_numpy(rainy.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device)
            out = model(x)[0].float().cpu().numpy().transpose(1, 2, 0)
            scores.append(full_reference_scores(to_uint8(out, "truncate"), clean, ("psnr_y", "ssim_y")))
    model.train(was_training)
    return {k: float(np.mean([s[k] for s in scores])) for k in ("psnr_y", "ssim_y")} if scores else {}


def _plot_curves(history: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    if not history:
        return
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key in sorted(k for k in history[0] if k.startswith("loss_")):
        axes[0].plot(epochs, [h[key] for h in history], label=key[5:])
    axes[0].set_xlabel("epoch")
    axes[0].set_title("training loss (weighted terms)")
    axes[0].legend(fontsize=7)
    if "psnr_y" in history[0]:
        axes[1].plot(epochs, [h["psnr_y"] for h in history], color="tab:green")
        axes[1].set_title("validation PSNR (Y, dB)")
        axes[1].set_xlabel("epoch")
    fig.tight_layout()
    atomic_save_figure(path, fig)


@leaves_process_group_as_found
def train_sapnet(
    config: TrainConfig,
    dataset: PatchDataset,
    val_pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    resume: bool = False,
    arch: str = "sapnet",
    on_step: Callable[[int, int, int, dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    data_description: dict | None = None,
) -> TrainResult:
    """Train; returns the trained model (unwrapped) and the run's history. Checkpoints go to `config.out`."""
    device, rank, world = setup_processes(config.device, config.batch)
    distributed = world > 1
    out_dir = Path(config.out)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model_kwargs = {"width": config.model.width, "stages": config.model.stages,
                    "dilations": list(config.model.dilations), "reduction": config.model.reduction}
    if arch == "prenet":
        model_kwargs = {"width": config.model.width, "stages": config.model.stages, "blocks": len(config.model.dilations)}
    model = create_model(arch, **model_kwargs).to(device)
    init_sha256 = None
    if config.init:  # fine-tuning: verified weights in, fresh optimiser and schedule (a resume restores both)
        from rainkit.hub.checkpoint import load_state_dict_strict, read_state_dict
        from rainkit.hub.weights import resolve_weights

        resolved = resolve_weights(config.init)
        init_sha256 = resolved.sha256
        if not resume:
            load_state_dict_strict(model, read_state_dict(resolved.path), source=resolved.path)
    use_amp = (config.amp and device.type == "cuda") or (config.cpu_bf16 and device.type == "cpu")
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    terms = build_loss_terms(config, device)

    epoch, start_batch, global_step = 0, 0, 0
    history: list[dict] = []
    best: dict | None = None
    checkpoint_path = out_dir / CHECKPOINT
    if resume:
        if not checkpoint_path.is_file():
            raise RainkitError(f"{checkpoint_path}: no checkpoint to resume from")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, start_batch, global_step = int(state["epoch"]), int(state["batch"]), int(state["global_step"])
        history = json.loads(state["history"])
        best = json.loads(state["best"]) if state["best"] else None
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    def save(position_epoch: int, position_batch: int) -> None:
        if rank != 0:
            return
        atomic_torch_save(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": position_epoch,
            "batch": position_batch, "global_step": global_step, "history": json.dumps(history),
            "best": json.dumps(best) if best else "", "config": json.dumps(config.to_dict()),
        })

    interrupted = False
    previous_handler = signal.getsignal(signal.SIGTERM)
    if rank == 0 and threading_main():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    log = open(out_dir / "train.log", "a") if rank == 0 else None
    per_rank = config.batch // world
    batches_per_epoch = max(1, len(dataset) // config.batch)
    workers = resolve_workers(config.workers, device)
    position = (epoch, start_batch)
    try:
        while epoch < config.epochs:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, epoch)
            order = epoch_order(config.seed, epoch, len(dataset))
            sums: dict[str, float] = {}
            count = 0
            started = time.perf_counter()
            batches = EpochBatches(dataset, order, epoch=epoch, batch=config.batch, first=start_batch,
                                   count=batches_per_epoch, rank_slice=slice(rank * per_rank, (rank + 1) * per_rank))
            for b, (rainy, clean) in enumerate(epoch_loader(batches, workers, device.type == "cuda"), start_batch):
                position = (epoch, b)
                rainy = rainy.to(device, non_blocking=True)
                clean = clean.to(device, non_blocking=True)
                if use_amp:
                    rainy = rainy.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    output = net(rainy)
                values = {name: weight * fn(output.float(), clean, rainy) for name, (weight, fn) in terms.items()}
                total = sum(values.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                global_step += 1
                count += 1
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                if on_step:
                    on_step(global_step, b + 1, batches_per_epoch, {k: float(v.detach()) for k, v in values.items()})
                if log and global_step % config.log_every == 0:
                    log.write(json.dumps({"step": global_step, "epoch": epoch, "batch": b, "lr": lr_at(config, epoch),
                                          **{f"loss_{k}": round(float(v.detach()), 6) for k, v in values.items()}}) + "\n")
                    log.flush()
                if config.max_steps and global_step >= config.max_steps:
                    position = (epoch, b + 1) if b + 1 < batches_per_epoch else (epoch + 1, 0)
                    save(*position)
                    return TrainResult(model, out_dir, global_step, epoch, history, best)
            record = {"epoch": epoch + 1, "step": global_step, "lr": lr_at(config, epoch),
                      "seconds": round(time.perf_counter() - started, 2),
                      **{f"loss_{k}": v / max(count, 1) for k, v in sums.items()}}
            if rank == 0 and val_pairs:
                record.update(validate(model, val_pairs, device))
                if best is None or record["psnr_y"] > best["psnr_y"]:
                    best = dict(record)
                    _save_best(model, arch, model_kwargs, config, record, out_dir, data_description, init_sha256)
            elif rank == 0 and not val_pairs:
                best = dict(record)
                _save_best(model, arch, model_kwargs, config, record, out_dir, data_description, init_sha256)
            history.append(record)
            epoch, start_batch = epoch + 1, 0
            position = (epoch, 0)
            save(epoch, 0)
            if rank == 0:
                _plot_curves(history, out_dir / "curves.png")
            if on_epoch:
                on_epoch(record)
    except KeyboardInterrupt:
        interrupted = True
        save(*position)
        raise
    finally:
        if log:
            log.close()
        if rank == 0 and threading_main():
            signal.signal(signal.SIGTERM, previous_handler)
    return TrainResult(model, out_dir, global_step, epoch, history, best, interrupted)


def _save_best(model, arch: str, model_kwargs: dict, config: TrainConfig, record: dict, out_dir: Path,
               data_description: dict | None, init_sha256: str | None = None) -> None:
    save_checkpoint(out_dir / BEST, model, arch, model_kwargs)
    from rainkit.hub.weights import sha256_file

    card = {
        "arch": arch,
        "arch_kwargs": model_kwargs,
        "sha256": sha256_file(out_dir / BEST),
        "data": data_description or {"folders": config.data, "synthesize": config.synthesize},
        "validation": config.val or f"{config.val_fraction:.0%} of the data",
        "init": {"weights": config.init, "sha256": init_sha256} if config.init else None,
        "command": " ".join(sys.argv),
        "epoch": record["epoch"],
        "step": record["step"],
        "scores": {k: record[k] for k in ("psnr_y", "ssim_y") if k in record},
        "loss_weights": config.to_dict()["loss"],
        "config": config.to_dict(),
        "commit": git_commit(),
        "rainkit_version": __version__,
    }
    atomic_write_json(out_dir / "best.json", card)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
