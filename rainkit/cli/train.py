"""`rainkit train`: train derain networks on your own data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from rainkit.cli.app import app, console

train_app = typer.Typer(help="Train networks on your own data (single process, or torchrun for DDP).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("sapnet")
def train_sapnet_command(
    data: List[str] = typer.Option([], "--data", help="Training folder: paired (any layout `rainkit benchmark` reads), "
                                   "or clean images with --synthesize. Repeat for several folders."),
    synthesize: Optional[str] = typer.Option(None, "--synthesize", help="Rain preset (light, heavy, storm) to make "
                                             "pairs from clean images on the fly."),
    val: Optional[str] = typer.Option(None, "--val", help="Paired validation folder (default: a 5% split of --data)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder for checkpoints, log and curves (default runs/sapnet)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML file of settings."),
    overrides: List[str] = typer.Option([], "--set", help="Override a setting: key=value (e.g. loss.lpips=0, milestones=30,50,80)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Global batch (split over DDP ranks)."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
    arch: str = typer.Option("sapnet", "--arch", help="Network to train: sapnet or prenet."),
    vgg_weights: Optional[str] = typer.Option(None, "--vgg-weights", help="torchvision VGG-16 ImageNet weights (vgg16-397923af.pth)."),
    lpips_weights: Optional[str] = typer.Option(None, "--lpips-weights", help="LPIPS v0.1 VGG linear weights (vgg.pth)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
) -> int:
    """Train SAPNet with the paper's losses and schedule; keeps the best checkpoint as safetensors + JSON card."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rainkit.train.config import load_config
    from rainkit.train.data import prepare_training_data
    from rainkit.train.sapnet import train_sapnet

    if arch not in ("sapnet", "prenet"):
        raise typer.BadParameter(f"unknown network '{arch}' (sapnet or prenet)", param_hint="--arch")
    direct = {"data": list(data) or None, "synthesize": synthesize, "val": val, "out": out, "epochs": epochs,
              "batch": batch, "lr": lr, "seed": seed, "device": device, "vgg_weights": vgg_weights,
              "lpips_weights": lpips_weights}
    config = load_config(config_file, overrides, **direct)
    rank = int(os.environ.get("RANK", "0"))
    prepared = prepare_training_data(config)
    if rank == 0:
        d = prepared.description
        console.print(f"training {arch} on {d['train_images']} images ({len(prepared.train)} patches an epoch"
                      f"{', rain synthesised: ' + str(config.synthesize) if config.synthesize else ''}); "
                      f"validation: {d['val_images']} images ({escape(d['validation'])}); run folder {escape(config.out)}",
                      highlight=False)

    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=rank != 0)
    task = progress.add_task("train", total=1, epoch=0, losses="")
    state = {"epoch": 0}

    def on_step(step: int, batch_index: int, batches: int, losses: dict) -> None:
        text = "  ".join(f"{name} {value:+.4f}" for name, value in losses.items())
        progress.update(task, completed=batch_index, total=batches, epoch=state["epoch"] + 1, losses=text)

    def on_epoch(record: dict) -> None:
        state["epoch"] = record["epoch"]
        scores = (f"  val psnr_y {record['psnr_y']:.2f} dB ssim_y {record['ssim_y']:.4f}" if "psnr_y" in record else "")
        losses = "  ".join(f"{k[5:]} {v:+.4f}" for k, v in record.items() if k.startswith("loss_"))
        progress.console.print(f"epoch {record['epoch']}/{config.epochs}: {losses}{scores}  ({record['seconds']:.0f} s)",
                               highlight=False)

    with progress:
        result = train_sapnet(config, prepared.train, prepared.val_pairs, resume=resume, arch=arch,
                              on_step=on_step, on_epoch=on_epoch, data_description=prepared.description)
    if rank == 0:
        best = result.best or {}
        score = f" (val psnr_y {best['psnr_y']:.2f} dB)" if "psnr_y" in best else ""
        console.print(f"done: {result.global_step} steps; best weights {escape(str(result.out / 'best.safetensors'))}"
                      f"{score}; use them with `rainkit derain --weights {escape(str(result.out / 'best.safetensors'))}`",
                      highlight=False)
    return 0
