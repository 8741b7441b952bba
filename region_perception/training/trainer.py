"""The trainer: one loop for every backend, driven by the backend's :class:`TrainRecipe` (no rclpy).

Why Accelerate: the same ``region-perception train`` runs on one CPU, one GPU, or many processes under
``accelerate launch`` / ``torchrun`` (DDP, FSDP) without a launcher of our own. Each rank draws its own
rows (seeded by seed, rank and step, so a resumed run draws what the interrupted one would have), the
gradients are averaged by the engine, and the final evaluation shards the val split over the same ranks
through the harness (``region_perception.evaluation``), whose merged metrics equal a one-process run.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.settings import MODEL_SETTINGS_KEY, flatten
from .examples import ExampleSampler, check_tasks
from .recipes import distinct_images, get_recipe, negative_index, referring_loss, select_trainable
from .vision import STAGE0_META

VOCABULARY_FILE = "vocabulary.txt"  # the training data's categories, beside the weights

CHECKPOINTS = "checkpoints"
# what each training task is measured by at the end (harness task, options)
EVAL_OF_TASK: dict[str, list[tuple[str, dict]]] = {
    "caption": [("caption", {"region": "box", "meteor": False})],
    "classify": [("classify", {"region": "box"}), ("classify", {"region": "mask"})],
    "refer": [("comprehension", {"candidates": "gt"}), ("refer", {"route": "proposals"})],
}


# "vision": stage 0, the vision tower on dense labels (training/vision.py); "region": stage 1, the region pathway
STAGES = ("vision", "region")


class TrainError(ValueError):
    """Bad training input (dataset, task, output directory): one line, exit status 2."""


@dataclass
class TrainConfig:
    model: str
    data: str
    tasks: list[str]
    out: Path
    train: list[str] | None = None  # parameter groups; None = the recipe's (all of them for a random base)
    steps: int | None = None  # optimizer steps; None = from epochs
    epochs: float | None = None
    batch_size: int = 16  # rows per process per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    split: str = "train"
    val_split: str = "val"
    eval_limit: int | None = None  # per evaluation task; 0 = no evaluation
    save_every: int = 0  # optimizer steps between checkpoints; 0 = about five per run
    device: str = "auto"
    sizes: dict = field(default_factory=dict)  # toy bases: size overrides for the builder
    progress: bool = True
    stage: str = "region"  # one of STAGES
    tower_cache_mb: int = 2048  # stage 1: the frozen tower's output kept per image, at most this much; 0 = off
    # referring sentences also given with another object of the image, whose sentence loss must exceed the true
    # region's by this many nats a token (recipes/__init__.py referring_loss); 0 = the language-model loss only
    refer_margin: float = 0.0
    refer_margin_weight: float = 1.0  # the hinge's weight beside the language-model loss
    # engine settings stored with the model as its own (region_perception.json "settings"), used by its final
    # evaluation and by every later load that does not set them (engine/settings.py); the training data's
    # categories are always stored as its default vocabulary
    settings: dict = field(default_factory=dict)


# ---------------------------------------------------------------- checks before anything is written


def check_inputs(cfg: TrainConfig):
    """Validate everything cheap to validate; returns (train dataset, sampler). Nothing is written."""
    tasks = check_tasks(cfg.tasks)
    if cfg.refer_margin < 0 or cfg.refer_margin_weight <= 0:
        raise TrainError("--refer-margin must be 0 or more and --refer-margin-weight above 0")
    if cfg.refer_margin > 0 and "refer" not in tasks:
        raise TrainError("--refer-margin trains referring sentences against other regions: it needs the refer task")
    dataset = check_dataset(cfg)
    try:
        sampler = ExampleSampler(dataset, tasks, refer_negatives=cfg.refer_margin > 0)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    return dataset, sampler


def check_dataset(cfg: TrainConfig):
    """The output directory, the schedule and the training split checked; the split loaded. Nothing is written."""
    from ..datasets import load_dataset

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (cfg.overwrite or cfg.resume):
        raise TrainError(f"--out {out} exists and is not empty: pass --overwrite to replace it or --resume")
    if cfg.resume and cfg.overwrite:
        raise TrainError("--resume and --overwrite contradict each other: choose one")
    if cfg.steps is None and cfg.epochs is None:
        raise TrainError("give --steps N or --epochs E")
    if (cfg.steps is not None and cfg.steps < 1) or (cfg.epochs is not None and cfg.epochs <= 0):
        raise TrainError("--steps / --epochs must be positive")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise TrainError("--batch-size and --grad-accum must be at least 1")
    if not 0 <= cfg.warmup_ratio < 1:
        raise TrainError("--warmup-ratio must be in [0, 1)")
    try:
        dataset = load_dataset(cfg.data, cfg.split)
    except (OSError, ValueError) as exc:
        raise TrainError(f"--data {cfg.data}: {exc}") from None
    if not dataset.samples:
        raise TrainError(f"--data {cfg.data} ({cfg.split}): the dataset has no annotations")
    missing = [i.path for i in dataset.images.values() if not i.path.is_file()]
    if missing:
        raise TrainError(f"--data {cfg.data} ({cfg.split}): {len(missing)} image(s) missing, e.g. {missing[0]}")
    return dataset


# ---------------------------------------------------------------- the base model


def resolve_base(name: str, work: Path, seed: int, sizes: dict) -> tuple[str, str, bool]:
    """(backend, directory or id to load, weights random). Toy names build the untrained toy architecture."""
    from ..models.registry import backend_of
    from ..models.tiny import RANDOM_WEIGHTS_MARKER

    toy = _toy_builders()
    if name in toy:
        backend, build = toy[name]
        path = work / "base"
        build(path, seed=seed, sizes=sizes or None)
        return backend, str(path), True
    from ..models.registry import TINY_MODELS

    if name in TINY_MODELS:
        from ..models.loading import tiny_path

        path = tiny_path(name)
        return backend_of(str(path)), str(path), True
    local = Path(name)
    if local.is_dir() and not (local / "config.json").is_file():
        raise TrainError(f"--model {name}: a directory without config.json")
    return backend_of(name), name, local.is_dir() and (local / RANDOM_WEIGHTS_MARKER).exists()


def _toy_builders() -> dict:
    from ..models import toy
    from ..models.regiongpt.tiny import build_toy_regiongpt

    out = {f"toy-{b}": (b, f) for b, f in toy.BUILDERS.items()}
    out.setdefault("toy-regiongpt", ("regiongpt", build_toy_regiongpt))
    return out


# ---------------------------------------------------------------- the loop


class _LossModule(torch.nn.Module):
    """The model plus its recipe's loss, so DDP/FSDP wrap one forward that computes the loss."""

    def __init__(self, model: torch.nn.Module, recipe, refer_margin: float = 0.0, margin_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.refer_margin = refer_margin
        self.margin_weight = margin_weight

    def forward(self, batch: dict) -> torch.Tensor:
        if "negative_for" not in batch:
            return self.recipe.loss(self.model, batch)
        sums, counts = self.recipe.row_losses(self.model, batch)
        return referring_loss(sums, counts, batch["negative_for"], self.refer_margin, self.margin_weight)


class TowerCache:
    """The frozen vision tower's output per training image, computed once and reused by later steps.

    Why: in stage 1 the tower does not train, yet every step encoded (and preprocessed) each drawn image
    again, though a run draws each image many times (toy-regionvlm: 2500 steps x 8 images over 2700).
    The numbers are the ones the uncached step computes: used only where the tower's output cannot change
    (frozen, no batch-norm statistics to update, two forwards equal: no dropout), computed under the same
    autocast, one image's output independent of the others'. Bounded: images beyond ``max_bytes`` are
    encoded each time they are drawn, as without the cache. Kept on the CPU (the batch then moves).
    """

    def __init__(self, recipe, processor, max_bytes: int, autocast) -> None:
        self.recipe = recipe
        self.processor = processor
        self.max_bytes = max_bytes
        self.autocast = autocast  # a context manager factory: the trainer's mixed precision
        self.store: dict[int, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.checked: bool | None = None  # the tower gives the same output twice (None: not yet seen)

    @staticmethod
    def applies(recipe, model: torch.nn.Module, groups: dict[str, list[str]], accelerator) -> str | None:
        """Why the tower's output cannot be cached for this run (None: it can)."""
        from accelerate.utils import DistributedType

        if not hasattr(recipe, "tower_features") or "vision" not in groups:
            return "the recipe has no tower_features"
        named = dict(model.named_parameters())
        if any(named[n].requires_grad for n in groups["vision"]):
            return "the vision tower trains"
        if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                DistributedType.MULTI_GPU):
            return f"{accelerator.distributed_type} shards the parameters"  # the tower is only whole in forward
        prefixes = tuple(p.rstrip(".") for p in getattr(recipe, "groups", {}).get("vision", ()))
        for name, module in model.named_modules():
            if prefixes and not name.startswith(prefixes):
                continue
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training \
                    and module.track_running_stats:
                return f"{name} updates batch-norm statistics"
        return None

    def _encode(self, model: torch.nn.Module, images: list[np.ndarray], device: torch.device) -> torch.Tensor:
        pixels = self.recipe.vision_pixels(self.processor, images).to(device)
        with torch.no_grad(), self.autocast():
            return self.recipe.tower_features(model, pixels)

    def _deterministic(self, model: torch.nn.Module, images: list[np.ndarray], device: torch.device) -> bool:
        """Two forwards of the same images agree (no dropout); the RNG is left as it was, so a run that
        turns the cache off draws what it would have drawn without this check."""
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return bool(torch.equal(self._encode(model, images, device), self._encode(model, images, device)))
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def batch(self, model: torch.nn.Module, examples, device: torch.device) -> dict:
        """The recipe's batch with ``image_features`` in place of ``pixel_values`` (or the plain batch when
        the first check finds the tower not deterministic: the cache then stays off)."""
        if self.checked is None:
            _, images, _ = distinct_images(examples)
            self.checked = self._deterministic(model, images, device)
            if not self.checked:
                print("train: the frozen tower's output varies between forwards (dropout?): not cached",
                      file=sys.stderr)
        if not self.checked:
            return self.recipe.build_batch(model, self.processor, examples)
        batch = self.recipe.build_batch(model, self.processor, examples, pixels=False)
        _, images, keys = distinct_images(examples)
        missing = [k for k, key in enumerate(keys) if key not in self.store]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            encoded = self._encode(model, [images[k] for k in missing], device).detach().cpu()
            for k, feats in zip(missing, encoded, strict=True):
                feats = feats.clone()  # its own storage: a slice would keep the whole batch alive
                fresh[k] = feats
                size = feats.numel() * feats.element_size()
                if keys[k] >= 0 and self.bytes + size <= self.max_bytes:
                    self.store[keys[k]] = feats
                    self.bytes += size
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        batch["image_features"] = torch.stack([fresh[k] if k in fresh else self.store[key]
                                               for k, key in enumerate(keys)])
        return batch


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def total_steps(cfg: TrainConfig, rows: int, world: int) -> int:
    """Optimizer steps: --steps, or --epochs over the dataset's rows at the global batch size."""
    if cfg.steps is not None:
        return int(cfg.steps)
    return max(1, math.ceil(float(cfg.epochs) * rows / (cfg.batch_size * cfg.grad_accum * world)))


def _latest_checkpoint(out: Path) -> Path | None:
    found = [p for p in (out / CHECKPOINTS).glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
                disable=not enabled)


def _load_base(cfg: TrainConfig):
    """(backend, recipe, model, processor, base metadata, weights random) of ``cfg.model``, on the CPU."""
    with tempfile.TemporaryDirectory(prefix="rp-train-") as tmp:
        # every rank builds the same toy base from the same seed (no shared file system needed); before
        # the process group exists, since save_pretrained writes nothing on a rank other than 0 after
        backend, base_path, base_random = resolve_base(cfg.model, Path(tmp), cfg.seed, cfg.sizes)
        recipe = get_recipe(backend)
        model, processor = recipe.load(base_path, torch.device("cpu"))
        base_meta = Path(base_path) / "region_perception.json"
        meta = json.loads(base_meta.read_text()) if base_meta.is_file() else {}
    return backend, recipe, model, processor, meta, base_random


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    mixed = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mixed, cpu=cpu)
    set_seed(cfg.seed)
    out = Path(cfg.out)
    if accelerator.is_main_process:
        if out.is_dir() and cfg.overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    return accelerator, mixed


def default_groups(recipe, groups: dict, base_random: bool, meta: dict) -> list[str]:
    """What stage 1 trains when ``--train`` is not given: the paper's groups for a trained base; every group of
    a random base, except a tower that stage 0 pre-trained (frozen, as the real recipes freeze theirs)."""
    if not base_random:
        return list(recipe.default_train)
    if meta.get(STAGE0_META):
        return [g for g in groups if g != "vision"]
    return list(groups)


@dataclass
class _Loop:
    """What one run of the optimisation loop produced."""

    wrapper: Any
    losses: list[float]
    first_loss: float | None
    start: int
    warmup: int
    seconds: float


def _optimise(cfg: TrainConfig, accelerator, module: torch.nn.Module, params: list, steps: int, make_batch,
              label: str) -> _Loop:
    """AdamW + cosine with warm-up over ``module`` (its forward returns the loss); checkpoints and --resume.

    ``make_batch(unwrapped_module, rng)`` draws one micro-batch; each rank's draws are seeded by seed, rank,
    step and micro-step, so a resumed run draws what the interrupted one would have.
    """
    from transformers import get_cosine_schedule_with_warmup

    out = Path(cfg.out)
    rank = accelerator.process_index
    warmup = math.ceil(cfg.warmup_ratio * steps)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # stepped by hand once per optimizer step (Accelerate's wrapper would step it once per process)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    wrapper, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    start = 0
    if cfg.resume:
        ckpt = _latest_checkpoint(out)
        if ckpt is not None:
            accelerator.load_state(str(ckpt))
            start = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
    if accelerator.is_main_process:
        print(label + (f"; resumed at step {start}" if start else ""), file=sys.stderr)
    save_every = cfg.save_every or max(1, steps // 5)
    losses: list[float] = []
    first_loss: float | None = None
    bar = _progress(steps, start, cfg.progress and accelerator.is_main_process)
    t0 = time.perf_counter()
    rows_done = 0
    wrapper.train()
    for step in range(start, steps):
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng([cfg.seed, rank, step, micro])
            batch = _to(make_batch(accelerator.unwrap_model(wrapper), rng), accelerator.device)
            with accelerator.accumulate(wrapper):
                with accelerator.autocast():
                    loss = wrapper(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            step_loss += float(loss.detach()) / cfg.grad_accum
            rows_done += cfg.batch_size * accelerator.num_processes
        scheduler.step()
        step_loss = float(accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean"))
        if first_loss is None:
            first_loss = step_loss
        losses.append(step_loss)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                        rows_s=f"{rows_done / elapsed:.1f}", s_step=f"{elapsed / (step + 1 - start):.3f}")
        bar.update(1)
        done = step + 1
        if done % save_every == 0 and done < steps:
            _checkpoint(accelerator, out, done)
    bar.close()
    seconds = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    return _Loop(wrapper, losses, first_loss, start, warmup, seconds)


def _summary(cfg: TrainConfig, backend: str, tasks: list[str], train_groups: list[str], n_trainable: int,
             steps: int, loop: _Loop, accelerator, mixed: str) -> dict[str, Any]:
    done = max(steps - loop.start, 1)
    return {
        "model": cfg.model, "backend": backend, "stage": cfg.stage, "data": str(cfg.data), "tasks": tasks,
        "train_groups": train_groups, "trainable_parameters": n_trainable, "steps": steps,
        "resumed_at": loop.start, "world_size": accelerator.num_processes, "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum, "lr": cfg.lr, "warmup_steps": loop.warmup, "seed": cfg.seed,
        "first_loss": loop.first_loss,
        "final_loss": float(np.mean(loop.losses[-20:])) if loop.losses else None,
        "train_seconds": round(loop.seconds, 1), "seconds_per_step": round(loop.seconds / done, 4),
        "threads": torch.get_num_threads(), "device": str(accelerator.device), "mixed_precision": mixed,
    }


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; writes OUT (weights, processor, model card); returns the summary.

    ``cfg.stage`` "region" (stage 1, the default) trains the region pathway with the backend's recipe;
    "vision" (stage 0) pre-trains the vision tower with dense supervision (:mod:`.vision`).
    """
    if cfg.stage not in STAGES:
        raise TrainError(f"--stage {cfg.stage!r}: expected one of {', '.join(STAGES)}")
    if cfg.stage == "vision":
        return train_vision(cfg)
    _, sampler = check_inputs(cfg)
    out = Path(cfg.out)
    backend, recipe, model, processor, meta, base_random = _load_base(cfg)
    accelerator, mixed = _accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    groups = recipe.parameter_groups(model)
    train_groups = list(cfg.train) if cfg.train else default_groups(recipe, groups, base_random, meta)
    try:
        trained = select_trainable(model, groups, train_groups)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if not trained:
        raise TrainError(f"--train {','.join(train_groups)}: no parameters to train")
    steps = total_steps(cfg, len(sampler.rows), world)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    label = (f"train: {cfg.model} ({backend}) on {cfg.data} [{','.join(sampler.tasks)}]: {steps} steps x "
             f"{cfg.batch_size} rows x {cfg.grad_accum} accum x {world} process(es); training "
             f"{','.join(train_groups)} ({n_trainable / 1e6:.2f}M parameters); device {accelerator.device}, "
             f"{torch.get_num_threads()} thread(s)")
    why_not = TowerCache.applies(recipe, model, groups, accelerator) if cfg.tower_cache_mb > 0 else "off"
    cache = None if why_not else TowerCache(recipe, processor, cfg.tower_cache_mb << 20, accelerator.autocast)
    label += "; the frozen tower's output cached per image" if cache else ""

    def make_batch(m: _LossModule, rng: np.random.Generator) -> dict:
        examples = sampler.draw(cfg.batch_size, rng)
        if cache is None:
            batch = recipe.build_batch(m.model, processor, examples)
        else:
            batch = cache.batch(m.model, examples, accelerator.device)
        negatives = negative_index(examples)
        return batch if negatives is None else {**batch, "negative_for": negatives}

    if cfg.refer_margin > 0:
        label += (f"; each referring sentence also against another object's region (margin {cfg.refer_margin} "
                  f"nats a token, weight {cfg.refer_margin_weight})")
    module = _LossModule(model, recipe, cfg.refer_margin, cfg.refer_margin_weight)
    loop = _optimise(cfg, accelerator, module, params, steps, make_batch, label)
    base_model = accelerator.unwrap_model(loop.wrapper).model
    summary = _summary(cfg, backend, sampler.tasks, train_groups, n_trainable, steps, loop, accelerator, mixed)
    summary.update(refer_margin=cfg.refer_margin,
                   refer_margin_weight=cfg.refer_margin_weight if cfg.refer_margin else None)
    summary["tower_cache"] = ({"images": len(cache.store), "mb": round(cache.bytes / 2**20, 1), "hits": cache.hits,
                               "misses": cache.misses} if cache and cache.checked else None)
    if accelerator.is_main_process:
        base_model.eval()
        recipe.save(base_model, processor, out)
        saved = out / "region_perception.json"  # what the recipe wrote (e.g. refinement_trained) wins
        meta.update(json.loads(saved.read_text()) if saved.is_file() else {})
        meta.pop("weights_random", None)
        if "refer" in sampler.tasks:  # referring sentences were trained after their own instruction
            meta["refer_prompt"] = True
        meta[MODEL_SETTINGS_KEY] = _own_settings(cfg, sampler.dataset, out)
        (out / "region_perception.json").write_text(json.dumps(meta, indent=1))
        _mark_trained(out, cfg, sampler.dataset, steps, None)
    accelerator.wait_for_everyone()

    if cfg.eval_limit != 0:
        summary["metrics"] = evaluate_out(out, cfg.data, cfg.val_split, sampler.tasks, limit=cfg.eval_limit,
                                          device=str(accelerator.device), progress=cfg.progress,
                                          rank_world=(rank, world))
    _finish(cfg, accelerator, out, summary, meta,
            lambda: _mark_trained(out, cfg, sampler.dataset, steps, summary.get("metrics")))
    return summary


def _finish(cfg: TrainConfig, accelerator, out: Path, summary: dict, meta: dict, mark) -> None:
    """training.json, the model card, no checkpoints left; on the main process."""
    if accelerator.is_main_process:
        mark()
        (out / "training.json").write_text(json.dumps({"config": _jsonable(asdict(cfg)), **summary}, indent=1))
        write_model_card(out, summary, json.loads((out / "region_perception.json").read_text())
                         if (out / "region_perception.json").is_file() else meta)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def train_vision(cfg: TrainConfig) -> dict:
    """Stage 0: the tower and linear heads on dense per-cell and mask-pooled labels; the heads are not kept."""
    from .vision import (
        VisionHeads,
        VisionSampler,
        VisionStage,
        collate,
        grid_shape,
        label_spaces,
        mark_stage0,
        probe_accuracy,
    )

    dataset = check_dataset(cfg)
    out = Path(cfg.out)
    backend, recipe, model, processor, meta, base_random = _load_base(cfg)
    groups = recipe.parameter_groups(model)
    if "vision" not in groups or not hasattr(recipe, "vision_grid"):
        raise TrainError(f"--stage vision: the {backend} recipe has no vision tower to pre-train")
    spaces = label_spaces(dataset)
    try:  # the grid's size from one forward of the first image, then the targets on that grid
        channels, grid = grid_shape(recipe, model, processor, dataset.read_image(dataset.samples[0].image_id))
        sampler = VisionSampler(dataset, spaces, grid, pad_square=recipe.pad_square)
    except ValueError as exc:
        raise TrainError(f"--data {cfg.data}: {exc}") from None
    torch.manual_seed(cfg.seed)
    heads = VisionHeads(channels, spaces)
    accelerator, mixed = _accelerator(cfg)
    train_groups = list(cfg.train) if cfg.train else ["vision"]
    try:
        select_trainable(model, groups, train_groups)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    n_trainable = sum(p.numel() for p in params)
    steps = total_steps(cfg, len(sampler.image_ids), accelerator.num_processes)
    label = (f"train --stage vision: {cfg.model} ({backend}) on {cfg.data}: {steps} steps x {cfg.batch_size} images "
             f"x {cfg.grad_accum} accum x {accelerator.num_processes} process(es); {grid}x{grid} grid of {channels}; "
             f"heads {', '.join(f'{k} ({len(v)})' for k, v in spaces.items())}; {n_trainable / 1e6:.2f}M parameters; "
             f"device {accelerator.device}, {torch.get_num_threads()} thread(s)")
    loop = _optimise(cfg, accelerator, VisionStage(model, recipe, heads), params, steps,
                     lambda m, rng: collate(recipe, processor, sampler.draw(cfg.batch_size, rng), spaces), label)
    stage = accelerator.unwrap_model(loop.wrapper)
    summary = _summary(cfg, backend, [], train_groups, n_trainable, steps, loop, accelerator, mixed)
    summary["grid"] = grid
    summary["label_spaces"] = {k: len(v) for k, v in spaces.items()}
    if cfg.eval_limit != 0:
        from ..datasets import load_dataset

        try:
            val = load_dataset(cfg.data, cfg.val_split)
        except (OSError, ValueError):
            val = None
        if val is not None and val.samples:
            val_sampler = VisionSampler(val, spaces, grid, pad_square=recipe.pad_square)
            if cfg.eval_limit:
                val_sampler.image_ids = val_sampler.image_ids[: cfg.eval_limit]
            summary["probe"] = probe_accuracy(stage, processor, val_sampler, device=accelerator.device)
    if accelerator.is_main_process:
        stage.model.eval()
        recipe.save(stage.model, processor, out)
        saved = out / "region_perception.json"
        meta.update(json.loads(saved.read_text()) if saved.is_file() else {})
        (out / "region_perception.json").write_text(json.dumps(meta, indent=1))
        if base_random:
            from ..models.tiny import RANDOM_WEIGHTS_MARKER

            (out / RANDOM_WEIGHTS_MARKER).write_text("random\n")
    _finish(cfg, accelerator, out, summary, meta,
            lambda: mark_stage0(out, data=str(cfg.data), steps=steps, probe=summary.get("probe", {})))
    return summary


def _checkpoint(accelerator, out: Path, step: int) -> None:
    """Model, optimizer, scheduler and RNG states (Accelerate's format) plus the step; the last two kept."""
    path = out / CHECKPOINTS / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "trainer_state.json").write_text(json.dumps({"step": step}))
        for old in sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _own_settings(cfg: TrainConfig, dataset, out: Path) -> dict:
    """The settings the model is evaluated with and carries: the data's categories as its vocabulary
    (``vocabulary.txt`` beside the weights), then ``cfg.settings``."""
    (out / VOCABULARY_FILE).write_text("".join(f"{c}\n" for c in dataset.categories))
    return {"default_vocabulary": VOCABULARY_FILE, **flatten(cfg.settings)}


def _mark_trained(out: Path, cfg: TrainConfig, dataset, steps: int, metrics: dict | None) -> None:
    from ..models.toy import mark_trained

    mark_trained(out, base=cfg.model, data=str(cfg.data), steps=steps, metrics=metrics,
                 synthetic=dataset.name == "synthetic")


# ---------------------------------------------------------------- evaluation through the harness


def final_evaluation_settings(out: Path, *, device: str = "auto", seed: int = 0):
    """Only how to load the trained model: everything else is its own settings (just written) or the package
    defaults, exactly what ``region-perception eval --model OUT`` resolves, so the card's figures come back."""
    from ..engine import UserSettings

    return UserSettings(command_line={"model": str(out), "device": device, "dtype": "float32", "seed": seed})


def evaluate_out(out: Path, data: str, split: str, tasks: Sequence[str], *, limit: int | None = None,
                 device: str = "auto", progress: bool = True, rank_world: tuple[int, int] = (0, 1),
                 seed: int = 0) -> dict:
    """Evaluate the trained directory on ``split`` with the harness, sharded over ranks; metrics per task."""
    from ..datasets import load_dataset
    from ..engine import RegionEngine
    from ..evaluation import evaluate

    dataset = load_dataset(data, split)
    engine = RegionEngine.load(final_evaluation_settings(out, device=device, seed=seed))
    results: dict[str, dict] = {}
    eval_dir = Path(out) / "eval"
    for task in tasks:
        for harness_task, opts in EVAL_OF_TASK[task]:
            name = harness_task + "".join(f"-{v}" for k, v in opts.items() if k in ("region", "candidates", "route"))
            rows = eval_dir / f"{name}.jsonl"
            if rank_world[0] == 0:
                rows.unlink(missing_ok=True)
                for old in eval_dir.glob(f"{name}.rank*.jsonl"):
                    old.unlink()
            _barrier()
            summary = evaluate(harness_task, engine, dataset, limit=limit, out=rows, progress=progress,
                               rank_world=rank_world, seed=seed, **opts)
            results[name] = _headline(harness_task, summary)
    return results


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _headline(task: str, s: dict) -> dict:
    """The figures the model card and docs quote (percent), with chance beside them."""
    chance = s.get("chance", {})
    keep = {"caption": ("name_accuracy", "CIDEr", "BLEU-4"),
            "classify": ("accuracy", "accuracy_paper_rule", "mAP"),
            "comprehension": ("accuracy",),
            "refer": ("mIoU", "oIoU", "precision@0.5", "proposal_upper_bound_mIoU")}[task]
    out = {"n": s.get("n")}
    for k in keep:
        if k in s:
            out[k] = s[k]
    out["chance"] = {k: v for k, v in chance.items() if k in keep} if isinstance(chance, dict) else chance
    out["errors"] = s.get("errors", 0)
    return out


def write_model_card(out: Path, summary: dict, meta: dict | None = None) -> None:
    """README.md in OUT: what the weights are, what they learnt from, how they were made, and how well they answer."""
    meta = meta or {}
    stage = summary.get("stage", "region")
    what = "pre-trained the vision tower (stage 0)" if stage == "vision" else "trained the region pathway"
    lines = [
        f"# {Path(out).name}", "",
        f"`region-perception train --stage {stage}` {what} of **{summary['model']}** ({summary['backend']} backend).",
        "",
    ]
    if meta.get("note"):
        lines += [f"**{meta['note']}**" + (": it knows only the synthetic world's coloured shapes (4 shapes, 6 "
                                          "colours, 3 sizes on plain or textured backgrounds), nothing of real "
                                          "images." if "synthetic" in str(meta["note"]) else "."), ""]
    lines += [
        "| | |", "|---|---|",
        f"| data | `{summary['data']}` |",
        f"| tasks | {', '.join(summary['tasks']) or '-'} |",
        f"| trained groups | {', '.join(summary['train_groups'])} ({summary['trainable_parameters'] / 1e6:.2f}M "
        "parameters) |",
        f"| steps | {summary['steps']} x {summary['batch_size']} rows x {summary['grad_accum']} accum x "
        f"{summary['world_size']} process(es), lr {summary['lr']}, cosine, {summary['warmup_steps']} warm-up, "
        f"seed {summary['seed']} |",
        f"| loss | {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} |",
        f"| training time | {summary['train_seconds']} s ({summary.get('seconds_per_step', '-')} s a step) on "
        f"{summary['device']}, {summary.get('threads', '-')} thread(s) |",
    ]
    stage0 = meta.get("stage0") or ({"probe": summary.get("probe")} if summary.get("probe") else None)
    if stage0:
        probe = stage0.get("probe") or {}
        shown = ", ".join(f"{k} {v['accuracy']} % (chance {v['chance']} %)" for k, v in probe.items())
        lines.append(f"| vision tower (stage 0) | {stage0.get('steps', summary['steps'])} steps on "
                     f"`{stage0.get('data', summary['data'])}`; mask-pooled linear probe on the val split: "
                     f"{shown or '-'} |")
    if meta.get("refer_prompt"):
        lines.append("| referring sentences | scored after their own instruction (`refer_prompt`) |")
    lines.append("")
    metrics = summary.get("metrics") or {}
    if metrics:
        lines += ["## Evaluation (val split, `region-perception eval`)", "", "| eval | n | metric | value | chance |",
                  "|---|---|---|---|---|"]
        for name, m in metrics.items():
            for k, v in m.items():
                if k in ("n", "chance", "errors"):
                    continue
                c = m.get("chance", {}).get(k, "") if isinstance(m.get("chance"), dict) else ""
                lines.append(f"| {name} | {m.get('n')} | {k} | {v} | {c} |")
        lines.append("")
    if meta.get("how_made"):
        lines += ["## How it was made", "", meta["how_made"], ""]
    own = meta.get(MODEL_SETTINGS_KEY) or {}
    if own:
        lines += ["## Its own settings", "",
                  "Stored in `region_perception.json` and used by the evaluation above; they apply whenever this "
                  "model is named and the user sets nothing else (command line > `--config` / node parameters > "
                  "the model's own > package defaults):", ""]
        lines += [f"- `{k}`: `{v}`" for k, v in flatten(own).items()] + [""]
    ref = meta.get("card_name") or str(out)
    lines += [f"Load it like any checkpoint: `region-perception describe IMAGE --points X,Y --model {ref}` (X,Y: a "
              f"pixel of the object), or the node with `model:={ref}`.", ""]
    (Path(out) / "README.md").write_text("\n".join(lines))
