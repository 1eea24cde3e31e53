"""`rainkit train`: train derain networks on your own data."""

from __future__ import annotations

import contextlib
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
    synthesize: Optional[str] = typer.Option(None, "--synthesize", help="Rain preset (light, heavy, storm, downpour, real), or a "
                                             "mix such as light,heavy, to make pairs from clean images on the fly."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune: start from these weights (registered name or "
                                       "file) with a fresh optimiser and schedule."),
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

    from rainkit.train.config import load_config, load_run_config
    from rainkit.train.data import prepare_training_data
    from rainkit.train.sapnet import train_sapnet

    if arch not in ("sapnet", "prenet"):
        raise typer.BadParameter(f"unknown network '{arch}' (sapnet or prenet)", param_hint="--arch")
    direct = {"data": list(data) or None, "synthesize": synthesize, "val": val, "out": out, "epochs": epochs,
              "batch": batch, "lr": lr, "seed": seed, "device": device, "vgg_weights": vgg_weights,
              "lpips_weights": lpips_weights, "init": init}
    rank = int(os.environ.get("RANK", "0"))
    config = load_config(config_file, overrides, **direct)
    if resume:  # the run's own settings, then this command's
        config = load_run_config(load_config, config.out, config_file, overrides, **direct)
    prepared = prepare_training_data(config)
    _report_skipped(prepared.skipped, rank)
    if rank == 0:
        d = prepared.description
        console.print(f"training {arch} on {d['train_images']} images ({len(prepared.train)} patches an epoch"
                      f"{', rain synthesised: ' + str(config.synthesize) if config.synthesize else ''}); "
                      f"validation: {d['val_images']} images ({escape(d['validation'])}); run folder {escape(config.out)}",
                      highlight=False)

    progress = _progress(rank)
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

    with _checkpoint_hint(Path(config.out), "sapnet", rank), progress:
        result = train_sapnet(config, prepared.train, prepared.val_pairs, resume=resume, arch=arch, on_step=on_step,
                              on_epoch=on_epoch, on_resume=_report_resume(rank), data_description=prepared.description)
    if rank == 0:
        best = result.best or {}
        score = f" (val psnr_y {best['psnr_y']:.2f} dB)" if "psnr_y" in best else ""
        console.print(f"{_ending(result)}; best weights {escape(str(result.out / 'best.safetensors'))}"
                      f"{score}; use them with `rainkit derain --weights {escape(str(result.out / 'best.safetensors'))}`",
                      highlight=False)
    return 0


def _progress(rank: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=rank != 0)


def _ending(result) -> str:
    """How a run ended: done, or stopped by its step or time budget (with a checkpoint to resume from)."""
    from rich.markup import escape

    if result.stopped:
        return (f"stopped by {result.stopped} after {result.global_step} steps (continue with `--resume --out "
                f"{escape(str(result.out))}`)")
    return f"done: {result.global_step} steps"


TPSENCE_DOMAINS = ("rain", "snow", "night")


def _report_skipped(skipped: list[str], rank: int) -> None:
    from rich.markup import escape

    if skipped and rank == 0:
        console.print(f"[yellow]warning:[/yellow] skipped {len(skipped)} unreadable image(s), training on the rest: "
                      f"{escape('; '.join(skipped))}", highlight=False, soft_wrap=True)


def _report_resume(rank: int):
    from rich.markup import escape

    def on_resume(changed: list[str]) -> None:
        if changed and rank == 0:
            console.print(f"[yellow]resuming with changed settings:[/yellow] {escape('; '.join(changed))}",
                          highlight=False, soft_wrap=True)

    return on_resume


@contextlib.contextmanager
def _checkpoint_hint(run_dir: Path, command: str, rank: int):
    """On Ctrl-C or SIGTERM (the trainer checkpoints at the end of the step), say how to continue."""
    from rich.markup import escape

    try:
        yield
    except KeyboardInterrupt:
        if rank == 0 and (run_dir / "last.pt").is_file():
            console.print(f"checkpoint saved in {escape(str(run_dir / 'last.pt'))}; continue with "
                          f"`rainkit train {command} --resume --out {escape(str(run_dir))}`", highlight=False,
                          soft_wrap=True)
        raise


@train_app.command("tpsence")
def train_tpsence_command(
    clear: Optional[str] = typer.Option(None, "--clear", help="Folder of clear (source) photos, read recursively."),
    target: Optional[str] = typer.Option(None, "--target", help="Folder of photos in the target weather (unpaired)."),
    domain: str = typer.Option("rain", "--domain", help="Target weather: rain, snow or night (names the run; "
                               "`rainkit generate --method tpsence --domain` uses the result)."),
    seg_clear: Optional[str] = typer.Option(None, "--seg-clear", help="Label maps of --clear: PNGs of class ids named "
                                            "like the images (e.g. from `rainkit segment`)."),
    seg_target: Optional[str] = typer.Option(None, "--seg-target", help="Label maps of --target, likewise."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Compute the label maps with a built-in "
                                            "segmenter: espnet (cached in the run folder)."),
    segmenter_weights: str = typer.Option("espnet.cityscapes", "--segmenter-weights", help="Segmenter weights: "
                                          "registered name or checkpoint path (resolved offline)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder for checkpoints, samples, curves and the "
                                      "exported generator (default runs/tpsence-<domain>)."),
    init: Optional[str] = typer.Option(None, "--init", help="Continue from earlier weights with fresh optimisers: a "
                                       "run folder or a GPU session's files (generator, sharded or not, plus D and "
                                       "MLP heads from networks.safetensors when there), or a generator file."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML file of TPSeNCE settings."),
    overrides: List[str] = typer.Option([], "--set", help="Override a setting: key=value (e.g. sence=false, "
                                        "lambda_tps=0.5, nce_layers=0,4,8,12,16, amp=false, max_steps=1000)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Total epochs: the first half at the initial "
                                         "learning rate, then linear decay (default 100 + 100)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Global batch (split over DDP ranks)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Training crop side (multiple of 4; default 256)."),
    load_size: Optional[int] = typer.Option(None, "--load-size", min=0, help="Scale images to this width before "
                                            "cropping (default 640; 0 = native size)."),
    lr: Optional[float] = typer.Option(None, "--lr"),
    sample_every: Optional[int] = typer.Option(None, "--sample-every", min=0, help="Steps between sample grids "
                                               "(clear | generated | target); 0 = never."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (bf16 autocast on CUDA)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped (its "
                                "settings and data folders are reused unless given again)."),
) -> int:
    """Train TPSeNCE (WACV 2024) clear -> rain/snow/night translation on unpaired folders; torchrun for DDP."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rainkit.train.config import load_run_config
    from rainkit.train.tpsence import train_tpsence
    from rainkit.train.tpsence_config import TPSeNCEConfig, load_tpsence_config
    from rainkit.train.unpaired_data import SEGMENTERS, UnpairedSources, prepare_unpaired_run, resume_unpaired_sources

    if domain not in TPSENCE_DOMAINS:
        raise typer.BadParameter(f"unknown domain '{domain}' ({', '.join(TPSENCE_DOMAINS)})", param_hint="--domain")
    if segmenter is not None and segmenter not in SEGMENTERS:
        raise typer.BadParameter(f"unknown segmenter '{segmenter}' ({', '.join(SEGMENTERS)})", param_hint="--segmenter")
    if (seg_clear is None) != (seg_target is None):
        raise typer.BadParameter("give both --seg-clear and --seg-target (or --segmenter espnet)",
                                 param_hint="--seg-clear/--seg-target")
    if segmenter is not None and seg_clear is not None:
        raise typer.BadParameter("give label-map folders or --segmenter, not both", param_hint="--segmenter")

    direct = {"out": out, "batch": batch, "crop": crop, "load_size": load_size, "lr": lr, "sample_every": sample_every,
              "seed": seed, "device": device, "init": init}
    if epochs is not None:
        direct["n_epochs"], direct["n_epochs_decay"] = epochs - epochs // 2, epochs // 2
    sources = UnpairedSources(clear, target, domain, seg_clear, seg_target, segmenter, segmenter_weights)
    rank = int(os.environ.get("RANK", "0"))
    seg_progress = Progress(TextColumn("[bold]segmenting {task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True, disable=rank != 0)
    seg_task = seg_progress.add_task("segment", total=1, what="")

    def on_image(what: str, done: int, total: int) -> None:
        seg_progress.update(seg_task, completed=done, total=total, what=what)

    config = load_tpsence_config(config_file, overrides, **direct)
    if out is None and config.out == TPSeNCEConfig.out:
        config.out = f"runs/tpsence-{domain}"
    if resume:  # the run's own settings and data folders, then this command's
        config = load_run_config(load_tpsence_config, config.out, config_file, overrides, **direct)
        sources = resume_unpaired_sources(config.out, sources)
    if sources.segmenter:
        with seg_progress:
            data = prepare_unpaired_run(sources, config, on_image)
    else:
        data = prepare_unpaired_run(sources, config)
    _report_skipped(data.skipped, rank)
    run_dir, domain = Path(config.out), sources.domain
    if rank == 0:
        labels_text = data.description.get("labels") or "none (plain PatchNCE)"
        console.print(f"{'resuming' if resume else 'training'} TPSeNCE clear -> {domain}: {len(data.clear)} clear and "
                      f"{len(data.target)} {domain} images; labels: {escape(labels_text)}; {config.epochs} epochs, "
                      f"batch {config.batch}, crop {config.crop}; run folder {escape(str(run_dir))}",
                      highlight=False, soft_wrap=True)

    progress = _progress(rank)
    task = progress.add_task("train", total=1, epoch=0, losses="")
    state = {"epoch": 0}
    shown = ("g", "gan", "nce", "tps", "d")

    def on_step(step: int, batch_index: int, batches: int, losses: dict) -> None:
        text = "  ".join(f"{k} {losses[k]:.3f}" for k in shown if k in losses)
        progress.update(task, completed=batch_index, total=batches, epoch=state["epoch"] + 1, losses=text)

    def on_epoch(record: dict) -> None:
        state["epoch"] = record["epoch"]
        text = "  ".join(f"{k} {record[k]:.4f}" for k in shown + ("mpa",) if k in record and record[k] == record[k])
        if all(f"score_{k}" in record for k in ("clear", "fake", "rainy")):
            text += (f"  D(clear/fake/rainy) {record['score_clear']:.2f}/{record['score_fake']:.2f}/"
                     f"{record['score_rainy']:.2f}")
        progress.console.print(f"epoch {record['epoch']}/{config.epochs} (step {record['step']}, lr {record['lr']:.2e}): "
                               f"{text}  ({record['seconds']:.0f} s)", highlight=False, soft_wrap=True)

    with _checkpoint_hint(run_dir, "tpsence", rank), progress:
        result = train_tpsence(config, data.clear, data.target, data.clear_labels, data.target_labels, resume=resume,
                               on_step=on_step, on_epoch=on_epoch, on_resume=_report_resume(rank),
                               data_description=data.description, run_data=sources.to_run_data())
    if rank == 0:
        if result.exported is not None:
            console.print(f"{_ending(result)}, {result.epoch} epochs; generator "
                          f"{escape(str(result.exported))} (+ generator.json); use it with `rainkit generate --method "
                          f"tpsence --domain {domain} --weights {escape(str(result.exported))} IN OUT`",
                          highlight=False, soft_wrap=True)
        else:
            console.print(f"stopped at step {result.global_step}", highlight=False)
    return 0
