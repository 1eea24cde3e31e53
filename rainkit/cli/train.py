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
    synthesize: Optional[str] = typer.Option(None, "--synthesize", help="Rain preset (light, heavy, storm), or a "
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rainkit.train.config import load_config
    from rainkit.train.data import prepare_training_data
    from rainkit.train.sapnet import train_sapnet

    if arch not in ("sapnet", "prenet"):
        raise typer.BadParameter(f"unknown network '{arch}' (sapnet or prenet)", param_hint="--arch")
    direct = {"data": list(data) or None, "synthesize": synthesize, "val": val, "out": out, "epochs": epochs,
              "batch": batch, "lr": lr, "seed": seed, "device": device, "vgg_weights": vgg_weights,
              "lpips_weights": lpips_weights, "init": init}
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


TPSENCE_DOMAINS = ("rain", "snow", "night")
SEGMENTERS = ("espnet",)
RUN_CONFIG = "config.json"  # the full TPSeNCE config of the run, read back by --resume
RUN_DATA = "data.json"  # the run's data arguments (folders, label maps, segmenter), read back by --resume


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … and {len(names) - limit} more" if len(names) > limit else "")


def read_label_folder(seg_dir: str | Path, names: List[str], images, option: str = "--seg-clear"):
    """The label map of every image: `seg_dir/<image path without suffix>.png` (or `<image name>.png`),
    an 8-bit single-channel PNG of class ids at the image's size. Anything missing or mismatched
    fails with one error listing every offending image."""
    import cv2
    import numpy as np

    from rainkit.errors import DatasetError

    folder = Path(seg_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{option} {folder}: label-map folder not found")
    labels, missing, wrong_size, unreadable = [], [], [], []
    for name, image in zip(names, images):
        rel = Path(name)
        path = next((p for p in (folder / rel.with_suffix(".png"), folder / f"{name}.png") if p.is_file()), None)
        if path is None:
            missing.append(str(rel.with_suffix(".png")))
            continue
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            unreadable.append(f"{path.name} (not a readable PNG)")
            continue
        if label.ndim == 3:
            if label.shape[2] >= 3 and (np.array_equal(label[:, :, 0], label[:, :, 1])
                                        and np.array_equal(label[:, :, 0], label[:, :, 2])):
                label = label[:, :, 0]
            else:
                unreadable.append(f"{path.name} (a colour image, not single-channel class ids: an overlay?)")
                continue
        if label.dtype != np.uint8:
            if label.max() > 255:
                unreadable.append(f"{path.name} (class ids above 255)")
                continue
            label = label.astype(np.uint8)
        if label.shape != image.shape[:2]:
            wrong_size.append(f"{name} (image {image.shape[1]}x{image.shape[0]}, map {label.shape[1]}x{label.shape[0]})")
            continue
        labels.append(label)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(names)} images have no label map (expected {_listing(missing)})")
    if wrong_size:
        problems.append(f"{len(wrong_size)} label maps differ in size from their image: {_listing(wrong_size)}")
    if unreadable:
        problems.append(f"{len(unreadable)} label maps cannot be used: {_listing(unreadable)}")
    if problems:
        raise DatasetError(f"{option} {folder}: " + "; ".join(problems) +
                           " — label maps are PNGs of class ids named like the images (`rainkit segment` writes them)")
    return labels


def _write_json(path: Path, value: dict) -> None:
    from rainkit.io.atomic import atomic_write_json

    atomic_write_json(path, value)


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
    import json

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rainkit.errors import RainkitError
    from rainkit.train.tpsence_config import TPSeNCEConfig, load_tpsence_config

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
              "seed": seed, "device": device}
    if epochs is not None:
        direct["n_epochs"], direct["n_epochs_decay"] = epochs - epochs // 2, epochs // 2
    config = load_tpsence_config(config_file, overrides, **direct)
    if out is None and config.out == TPSeNCEConfig.out:
        config.out = f"runs/tpsence-{domain}"
    run_dir = Path(config.out)
    data_args = {"domain": domain, "clear": clear, "target": target, "seg_clear": seg_clear, "seg_target": seg_target,
                 "segmenter": segmenter, "segmenter_weights": segmenter_weights}
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise RainkitError(f"{run_dir / 'last.pt'}: no checkpoint to resume from (is --out the run folder?)")
        if config_file is None and (run_dir / RUN_CONFIG).is_file():  # the run's own settings, then this command's
            config = load_tpsence_config(run_dir / RUN_CONFIG, overrides, **direct)
            config.out = str(run_dir)
        saved = json.loads((run_dir / RUN_DATA).read_text()) if (run_dir / RUN_DATA).is_file() else {}
        for key in ("clear", "target"):
            data_args[key] = data_args[key] or saved.get(key)
        if seg_clear is None and segmenter is None:
            for key in ("seg_clear", "seg_target", "segmenter", "segmenter_weights"):
                data_args[key] = saved.get(key, data_args[key])
        data_args["domain"] = saved.get("domain", domain)
    domain = data_args["domain"]
    if not data_args["clear"] or not data_args["target"]:
        raise typer.BadParameter("give the clear and target image folders", param_hint="--clear/--target")
    labelled = bool(data_args["seg_clear"] or data_args["segmenter"])
    if config.sence and config.lambda_nce > 0 and not labelled:
        raise RainkitError("SeNCE needs semantic label maps: give --seg-clear DIR --seg-target DIR (PNG label maps "
                           "named like the images, e.g. from `rainkit segment`) or --segmenter espnet, "
                           "or --set sence=false for plain PatchNCE")

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    from rainkit.train.unpaired_data import load_image_folder, prepare_unpaired_data

    description: dict
    if data_args["segmenter"]:
        from rainkit.hub import load_model, resolve_device
        from rainkit.models.espnet import Segmenter

        seg_device = resolve_device(config.device)
        if world > 1 and seg_device.type == "cuda":  # torchrun: each process segments on its own GPU (cached)
            import torch

            seg_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        model, resolved = load_model("espnet", data_args["segmenter_weights"], device=seg_device)
        cache = run_dir / "labels" / f"espnet-{resolved.sha256[:12]}"
        seg_progress = Progress(TextColumn("[bold]segmenting {task.fields[what]}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=True, disable=rank != 0)
        seg_task = seg_progress.add_task("segment", total=1, what="")

        def on_image(what: str, done: int, total: int) -> None:
            seg_progress.update(seg_task, completed=done, total=total, what=what)

        with seg_progress:
            clear_images, target_images, clear_labels, target_labels, description = prepare_unpaired_data(
                data_args["clear"], data_args["target"], Segmenter(model, seg_device), label_cache=cache,
                on_image=on_image)
        weights_name = resolved.entry.name if resolved.entry else str(resolved.path)
        description["labels"] = f"ESPNet {weights_name} (sha256 {resolved.sha256[:12]}), cached in {cache}"
    else:
        clear_images, clear_names = load_image_folder(data_args["clear"])
        target_images, target_names = load_image_folder(data_args["target"])
        clear_labels = target_labels = None
        if data_args["seg_clear"]:
            clear_labels = read_label_folder(data_args["seg_clear"], clear_names, clear_images, "--seg-clear")
            target_labels = read_label_folder(data_args["seg_target"], target_names, target_images, "--seg-target")
        description = {"clear": str(data_args["clear"]), "rainy": str(data_args["target"]),
                       "clear_images": len(clear_images), "rainy_images": len(target_images),
                       "labels": (f"label maps from {data_args['seg_clear']} and {data_args['seg_target']}"
                                  if clear_labels is not None else None)}
    description["domain"] = domain
    if not config.sence or config.lambda_nce <= 0:
        description["nce"] = "PatchNCE (sence=false)"

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_CONFIG, config.to_dict())
        saved_args = {k: (str(Path(v).expanduser().resolve()) if k in ("clear", "target", "seg_clear", "seg_target")
                          and v else v) for k, v in data_args.items()}
        _write_json(run_dir / RUN_DATA, saved_args)
        labels_text = description.get("labels") or "none (plain PatchNCE)"
        console.print(f"{'resuming' if resume else 'training'} TPSeNCE clear -> {domain}: {len(clear_images)} clear and "
                      f"{len(target_images)} {domain} images; labels: {escape(labels_text)}; {config.epochs} epochs, "
                      f"batch {config.batch}, crop {config.crop}; run folder {escape(str(run_dir))}",
                      highlight=False, soft_wrap=True)

    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=True, disable=rank != 0)
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

    from rainkit.train.tpsence import train_tpsence

    try:
        with progress:
            result = train_tpsence(config, clear_images, target_images, clear_labels, target_labels, resume=resume,
                                   on_step=on_step, on_epoch=on_epoch, data_description=description)
    except KeyboardInterrupt:
        if rank == 0 and (run_dir / "last.pt").is_file():
            console.print(f"checkpoint saved in {escape(str(run_dir / 'last.pt'))}; continue with "
                          f"`rainkit train tpsence --resume --out {escape(str(run_dir))}`", highlight=False,
                          soft_wrap=True)
        raise
    if rank == 0:
        if result.exported is not None:
            console.print(f"done: {result.global_step} steps, {result.epoch} epochs; generator "
                          f"{escape(str(result.exported))} (+ generator.json); use it with `rainkit generate --method "
                          f"tpsence --domain {domain} --weights {escape(str(result.exported))} IN OUT`",
                          highlight=False, soft_wrap=True)
        else:
            console.print(f"stopped at step {result.global_step}", highlight=False)
    return 0
