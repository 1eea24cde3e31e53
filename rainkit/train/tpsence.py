"""Training TPSeNCE: unpaired clear -> rainy translation with TPS and SeNCE (see `tpsence_objective.py`).

Adam (lr 2e-4, betas 0.5/0.999) for G, D and the MLP head, constant for `n_epochs` then linear
decay for `n_epochs_decay` (CUT's `linear` policy). Single process, or DDP under torchrun (env
vars RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; gloo on CPU, nccl on CUDA): the global batch is
split over ranks and gradients are averaged with an all-reduce after each backward (the
generator runs several partial forwards per step, which DistributedDataParallel's reducer does
not support), so the update is that of the global batch's mean loss whatever the number of
processes. bf16 autocast on CUDA; losses and the Sinkhorn plan are computed in fp32.

The loop, checkpoints (`last.pt` holds the three networks and the three optimisers), exact resume,
log, curves and stopping are the trainer base's (`rainkit.train.base`). Outputs in `config.out`
besides the base's: `samples/step_NNNNNNN.png` (clear | generated | rainy, every `sample_every`
steps) and, after every epoch and when a budget ends the run, `generator.safetensors` (rainkit's
format: `load_generator` and `rainkit.hub.load_model("tpsence", path)` rebuild it from the file
alone) with its card `generator.json`, and `networks.safetensors` (D and the MLP heads, what `init`
needs besides the generator to continue training).

`init` starts a run from earlier weights with fresh optimisers (`load_init`): a folder holding a
generator (`generator.safetensors`, or a sharded `model.safetensors.index.json` set) and optionally
`networks.safetensors` and the earlier card `generator.json`, whose `sessions` the new card extends, so
the card of weights trained over several sessions lists every session's steps. `epoch_offset` picks up
the learning-rate schedule where the earlier run left it.

On CUDA the networks and batches are channels-last (`memory_format`) and the next batch, with its NCE
patch positions, is made in a background thread while the GPU runs (`prefetch`); neither changes
which samples or positions a step uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rainkit.errors import RainkitError
from rainkit.io.atomic import atomic_write_json
from rainkit.train.base import Panel, Trainer, TrainResult, load_network_state, load_optimizer_state
from rainkit.train.data import rank_batch
from rainkit.train.tpsence_config import TPSeNCEConfig
from rainkit.train.tpsence_objective import TPSeNCE
from rainkit.train.unpaired_data import UnpairedDataset, sample_rng

GENERATOR = "generator.safetensors"
CARD = "generator.json"
NETWORKS_FILE = "networks.safetensors"  # D and the MLP heads, for `init`
NETWORKS_ARCH = "tpsence.training"  # the `rainkit.arch` of that file: not a network `load_model` builds
NETWORKS = ("generator", "discriminator", "head")
OPTIMIZERS = ("opt_g", "opt_d", "opt_f")


def lr_at(config: TPSeNCEConfig, epoch: int) -> float:
    """CUT's linear policy: lr for epochs 0..n_epochs-1, then 1 - k / (n_epochs_decay + 1) for the k-th decay epoch
    (epochs counted from `epoch_offset`, where a run continued with `init` picks the schedule up)."""
    epoch = epoch + config.epoch_offset
    return config.lr * (1.0 - max(0, epoch + 1 - config.n_epochs) / float(config.n_epochs_decay + 1))


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


def _networks_settings(config: TPSeNCEConfig) -> dict[str, Any]:
    return {"ndf": config.ndf, "n_layers_d": config.n_layers_d, "antialias": config.antialias,
            "netf_nc": config.netf_nc, "nce_layers": [int(i) for i in config.nce_layers], **config.generator_kwargs()}


def save_networks(path: str | Path, model: TPSeNCE, config: TPSeNCEConfig, fp16: bool = False) -> Path:
    """D and the MLP heads (`discriminator.*`, `head.*`) as safetensors, the settings they need in the metadata."""
    from rainkit.hub.checkpoint import ARCH_KEY, KWARGS_KEY
    from rainkit.io.atomic import atomic_save_safetensors

    state = {f"{name}.{key}": (value.half() if fp16 and value.is_floating_point() else value)
             for name in ("discriminator", "head") for key, value in getattr(model, name).state_dict().items()}
    metadata = {ARCH_KEY: NETWORKS_ARCH, KWARGS_KEY: json.dumps(_networks_settings(config), sort_keys=True),
                "rainkit.dtype": "fp16" if fp16 else "fp32"}
    return atomic_save_safetensors(path, state, metadata)


def _init_sources(source: str) -> tuple[str, Path | None, Path | None]:
    """(generator weights, networks file or None, earlier card or None) of an `init` value."""
    from rainkit.hub.checkpoint import find_index

    path = Path(source).expanduser()
    if not path.is_dir():
        return source, None, None
    generator = find_index(path) or path / GENERATOR
    if not generator.is_file():
        raise RainkitError(f"`init` {source}: the folder holds no generator ({GENERATOR} or a sharded "
                           f"model.safetensors.index.json set)")
    networks, card = path / NETWORKS_FILE, path / CARD
    return str(generator), networks if networks.is_file() else None, card if card.is_file() else None


def load_init(model: TPSeNCE, config: TPSeNCEConfig, source: str) -> dict[str, Any]:
    """Load earlier weights into `model` (the generator always; D and the MLP heads when `source` is a folder
    with `networks.safetensors`; fp16 files go into the fp32 networks); returns what the card records
    of it: the files' sha256 and the earlier card's sessions. Architecture mismatches are one-line errors."""
    from rainkit.hub import get_arch
    from rainkit.hub.checkpoint import (
        KWARGS_KEY,
        load_state_dict_strict,
        read_metadata,
        read_state_dict,
        weights_arch_kwargs,
    )
    from rainkit.hub.weights import resolve_weights

    generator, networks, card = _init_sources(source)
    resolved = resolve_weights(generator)
    saved = weights_arch_kwargs(resolved.path, read_metadata(resolved.path), get_arch("tpsence"))
    if resolved.entry is not None:
        saved = {**resolved.entry.arch_kwargs, **saved}
    own = config.generator_kwargs()
    differ = [f"{k} {saved[k]} (this run: {own[k]})" for k in own if k in saved and saved[k] != own[k]]
    if differ:
        raise RainkitError(f"`init` {resolved.path}: a generator with {', '.join(differ)}; set those to match")
    load_state_dict_strict(model.generator, read_state_dict(resolved.path), source=resolved.path)
    record: dict[str, Any] = {"source": str(source), "generator": str(resolved.path),
                              "generator_sha256": resolved.sha256, "networks_sha256": None}
    if networks is not None:
        from rainkit.hub.weights import sha256_file

        metadata = read_metadata(networks)
        try:
            settings = json.loads(metadata.get(KWARGS_KEY, "{}"))
        except json.JSONDecodeError:
            settings = {}
        mine = _networks_settings(config)
        differ = [f"{k} {settings[k]} (this run: {mine[k]})" for k in mine if k in settings and settings[k] != mine[k]]
        if differ:
            raise RainkitError(f"`init` {networks}: D and MLP heads made with {', '.join(differ)}; set those to match")
        state = read_state_dict(networks)
        for name in ("discriminator", "head"):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            load_state_dict_strict(getattr(model, name), part, source=f"{networks} ({name})")
        record["networks_sha256"] = sha256_file(networks)
    sessions: list[dict] = []
    if card is not None:
        try:
            earlier = json.loads(card.read_text())
        except (OSError, ValueError):
            earlier = {}
        sessions = [s for s in earlier.get("sessions", []) if isinstance(s, dict)] if isinstance(earlier, dict) else []
        if not sessions and isinstance(earlier, dict) and earlier.get("step"):
            sessions = [{"steps": earlier.get("step"), "batch": (earlier.get("config") or {}).get("batch")}]
    record["sessions"] = sessions
    return record


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Ahead:
    """Iterate over `make(item)` for the items of `items`, making the next one in a background thread."""

    def __init__(self, items, make):
        self.items, self.make = items, make

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        items = iter(self.items)
        with ThreadPoolExecutor(1, thread_name_prefix="tpsence-batch") as pool:
            pending = next((pool.submit(self.make, item) for item in items), None)
            while pending is not None:
                ready = pending.result()
                pending = next((pool.submit(self.make, item) for item in items), None)
                yield ready


class TPSeNCETrainer(Trainer):
    """TPSeNCE's G, D and MLP head on `UnpairedDataset` batches; exports the generator every epoch."""

    state_keys = NETWORKS + OPTIMIZERS
    init_record: dict[str, Any] | None = None

    def build(self) -> None:
        c = self.config
        if len(self.dataset) < c.batch:
            raise RainkitError(f"{len(self.dataset)} samples per epoch is less than one batch of {c.batch}")
        model = TPSeNCE(c)
        if c.init:  # earlier weights, fresh optimisers (a resume then restores this run's own state)
            self.init_record = load_init(model, c, c.init)
        cuda = self.device.type == "cuda"
        self.channels_last = self.channels_last_enabled(auto=cuda)
        self.prefetch = c.prefetch == "on" or (c.prefetch == "auto" and cuda)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.use_amp = self.autocast_enabled()
        betas = (c.beta1, c.beta2)
        self.optimizers = [torch.optim.Adam(getattr(self.model, name).parameters(), lr=c.lr, betas=betas)
                           for name in NETWORKS]
        self.g_params = list(self.model.generator.parameters()) + list(self.model.head.parameters())
        self.d_params = list(self.model.discriminator.parameters())

    def distribute(self) -> None:
        if self.world > 1:
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, 0)

    def state(self) -> dict[str, Any]:
        return {**{name: getattr(self.model, name).state_dict() for name in NETWORKS},
                **{key: opt.state_dict() for key, opt in zip(OPTIMIZERS, self.optimizers)}}

    def load_state(self, state: dict[str, Any], source: Path) -> None:
        for name in NETWORKS:
            load_network_state(getattr(self.model, name), state[name], source, name)
        for key, opt in zip(OPTIMIZERS, self.optimizers):
            load_optimizer_state(opt, state[key], source, key)

    def lr_at(self, epoch: int) -> float:
        return lr_at(self.config, epoch)

    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.config.batch

    def data_epoch(self, epoch: int) -> int:
        # a run continued with `init` draws new crops, flips and patches, not the first session's again
        return epoch + self.config.epoch_offset

    def make_batch(self, indices, epoch: int):
        """(indices, x, y, mPA, patch ids of x, patch ids of y): the ids are None until the first step
        has shown the NCE layers' sizes (then they are drawn here, as the step would draw them)."""
        c = self.config
        x, y, mpa = self.dataset.batch(indices, epoch)
        ids_x = ids_y = None
        positions = self.model.positions
        if positions is not None and c.lambda_nce > 0:
            ids_x = [torch.from_numpy(i) for i in self.model.draw_patch_ids(
                positions, [sample_rng(c.seed, epoch, int(i), 1) for i in indices])]
            if c.nce_idt:
                ids_y = [torch.from_numpy(i) for i in self.model.draw_patch_ids(
                    positions, [sample_rng(c.seed, epoch, int(i), 2) for i in indices])]
        if self.device.type == "cuda":
            x, y, mpa = x.pin_memory(), y.pin_memory(), mpa.pin_memory()
        return indices, x, y, mpa, ids_x, ids_y

    def epoch_batches(self, epoch: int, order, first: int, count: int, rank_slice: slice):
        indices = (rank_batch(order, b, self.config.batch, rank_slice) for b in range(first, count))
        if self.prefetch:
            return _Ahead(indices, lambda i: self.make_batch(i, epoch))
        return (self.make_batch(i, epoch) for i in indices)

    def train_step(self, batch, epoch: int) -> dict[str, float]:
        c, model = self.config, self.model
        opt_g, opt_d, opt_f = self.optimizers
        indices, x, y, mpa, ids_x, ids_y = batch
        x, y, mpa = (t.to(self.device, non_blocking=True) for t in (x, y, mpa))
        if self.channels_last:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        rngs_x = [sample_rng(c.seed, epoch, int(i), 1) for i in indices]
        rngs_y = [sample_rng(c.seed, epoch, int(i), 2) for i in indices]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            fake, idt = model.translate(x, y)
            d_terms = model.discriminator_loss(fake, y)
        opt_d.zero_grad(set_to_none=True)
        d_terms["d"].backward()
        if self.world > 1:
            _sync_grads(self.d_params, self.world)
        opt_d.step()
        # generator + head step, D frozen
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            g_terms = model.generator_loss(x, y, fake, idt, mpa, rngs_x, rngs_y, ids_x, ids_y)
        opt_g.zero_grad(set_to_none=True)
        opt_f.zero_grad(set_to_none=True)
        g_terms["g"].backward()
        if self.world > 1:
            _sync_grads(self.g_params, self.world)
        opt_g.step()
        opt_f.step()
        self.last_images = (x[0], fake[0], y[0])
        values = {k: float(v.detach()) for k, v in {**g_terms, **d_terms}.items()}
        values["mpa"] = float(mpa.mean())
        return values

    def after_step(self, batch) -> None:
        every = self.config.sample_every
        if every and self.global_step % every == 0:
            _write_sample(self.out / "samples" / f"step_{self.global_step:07d}.png", *self.last_images)

    def end_epoch(self, record: dict) -> None:
        # a usable generator after every epoch, so an interrupted or still-running run can be tried
        self.export()

    def export(self) -> None:
        """Write `generator.safetensors` (rainkit format, fp16 with `export_fp16`) and its card."""
        import copy

        from rainkit.hub.checkpoint import save_checkpoint
        from rainkit.hub.weights import sha256_file

        c = self.config
        generator = copy.deepcopy(self.model.generator).half() if c.export_fp16 else self.model.generator
        dtype = "fp16" if c.export_fp16 else "fp32"
        kwargs = c.generator_kwargs()
        self.exported = save_checkpoint(self.out / GENERATOR, generator, "tpsence", kwargs,
                                        extra={"rainkit.dtype": dtype})
        networks = save_networks(self.out / NETWORKS_FILE, self.model, c, fp16=c.export_fp16)
        earlier = list(self.init_record["sessions"]) if self.init_record else []
        session = {"steps": self.global_step, "batch": c.batch, "crop": c.crop, "image_steps": self.global_step * c.batch,
                   "epochs": self.epoch, "epoch_offset": c.epoch_offset, "device": _device_name(self.device),
                   "init_sha256": self.init_record["generator_sha256"] if self.init_record else None}
        card = self.run_card(
            arch="tpsence", arch_kwargs=kwargs, file=GENERATOR, sha256=sha256_file(self.exported), dtype=dtype,
            parameters=sum(p.numel() for p in self.model.generator.parameters()),
            task="clear -> rainy image translation (TPSeNCE, WACV 2024); inputs/outputs RGB in [-1, 1]",
            epoch=self.epoch, step=self.global_step, last_epoch_losses=self.history[-1] if self.history else {},
            networks={"file": NETWORKS_FILE, "sha256": sha256_file(networks)},
            init={k: v for k, v in self.init_record.items() if k != "sessions"} if self.init_record else None,
            sessions=earlier + [session], total_steps=sum(int(s.get("steps") or 0) for s in earlier + [session]))
        atomic_write_json(self.out / CARD, card)

    def curve_panels(self) -> list[Panel]:
        steps = [c["step"] for c in self.curve]

        def lines(keys, rename=lambda key: key):
            return {rename(k): [c.get(k) for c in self.curve] for k in keys if self.curve and k in self.curve[0]}

        return [Panel("generator terms (weighted)", "step", steps, lines(("g", "gan", "nce", "tps"))),
                Panel("discriminator (LSGAN)", "step", steps, lines(("d", "d_real", "d_fake"))),
                Panel("discriminator's mean score", "step", steps,
                      lines(("score_rainy", "score_fake", "score_clear"), lambda k: k.replace("score_", "D(")))]


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
    on_resume: Callable[[list[str]], None] | None = None,
    data_description: dict | None = None,
    run_data: dict | None = None,
) -> TrainResult:
    """Train TPSeNCE on unpaired uint8 RGB clear and rainy images with their semantic label maps.

    `clear_images` may also be a ready `UnpairedDataset` (then the other data arguments are
    ignored). Label maps (e.g. from `rainkit.train.unpaired_data.segment_images` with ESPNet) are
    needed for SeNCE; with `config.sence = False` they may be None (plain PatchNCE). Returns the
    trained networks (`model`: the `TPSeNCE` module) and the exported generator (`exported`);
    checkpoints and outputs go to `config.out`. `run_data` (the data arguments) is kept as
    `data.json` in the run folder for `resume_unpaired_sources`.
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
    trainer = TPSeNCETrainer(config, dataset, data_description=data_description, run_data=run_data)
    return trainer.run(resume=resume, on_step=on_step, on_epoch=on_epoch, on_resume=on_resume)
