"""Whole uint8 batches from the memory-mapped cache: the epoch-seeded batch sampler, the dataset
that warps (or leaves to the GPU) each batch, and `make_loader`, the one way to build a loader.
Kept apart from `pneumolib.data.labels` so that reading labels and building the cache never import
torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pneumolib.base.config import default_workers
from pneumolib.core.augment import AugmentPolicy, augment_batch_cpu, batch_rng, intensity_luts
from pneumolib.core.tasks import sampling_weights
from pneumolib.data.labels import open_images


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields `(epoch, batch_index, positions)` so each batch knows its own random stream.

    The order depends only on (seed, epoch): shuffled per epoch, or class-balanced draws with
    replacement. Under DDP each rank takes every `world`-th position of the same permutation.
    """

    def __init__(
        self,
        targets: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        balanced: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.targets = np.asarray(targets)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.balanced, self.rank, self.world = balanced, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        n = len(self.targets)
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        if self.balanced:
            w = sampling_weights(self.targets)
            idx = rng.choice(n, size=n, replace=True, p=w / w.sum())
        else:
            idx = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.world > 1:  # pad so every rank gets the same number of samples
            idx = np.concatenate([idx, idx[: (-n) % self.world]])[self.rank :: self.world]
        return idx

    def __iter__(self):
        idx = self.order()
        for b, i in enumerate(range(0, len(idx), self.batch_size)):
            yield self.epoch, b, idx[i : i + self.batch_size]

    def __len__(self) -> int:
        n = -(-len(self.targets) // self.world)
        return -(-n // self.batch_size)


class CacheBatches(torch.utils.data.Dataset):
    """Whole batches from the memory-mapped cache: uint8 in, uint8 out, no per-sample Python.

    `dataset[(epoch, b, positions)]` -> dict with `images` uint8 (B, S, S) (or warped to
    (B, out, out) when `warp_in_worker`), `target` float32 (B,), `position` int64 (B,),
    and the contrast `gain`/`bias` (B,) for train batches. With `normalise=(mean, std)` (and
    `warp_in_worker`) the worker turns contrast, brightness and normalisation into one lookup
    table per image, `luts` float32 (B, 256), instead of `gain`/`bias`: uint8 still crosses
    to the main process (a quarter of float32's bytes), where one `cv2.LUT` pass per image
    finishes the input (`train.to_device_batch`).
    """

    def __init__(
        self,
        cache: str | Path,
        rows: np.ndarray,
        targets: np.ndarray,
        out_size: int,
        policy,
        train: bool,
        seed: int = 0,
        warp_in_worker: bool = True,
        normalise: tuple[float, float] | None = None,
    ) -> None:
        self.cache, self.rows, self.targets = str(cache), np.asarray(rows), np.asarray(targets)
        self.out_size, self.policy, self.train, self.seed = out_size, policy, train, seed
        self.warp_in_worker, self.normalise = warp_in_worker, normalise
        self._images: np.ndarray | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int, np.ndarray]) -> dict:
        epoch, b, pos = key
        if self._images is None:
            self._images = open_images(self.cache)
        rows = self.rows[pos]
        order = np.argsort(rows, kind="stable")  # read the memory map front to back
        images = np.empty((len(rows), *self._images.shape[1:]), np.uint8)
        images[order] = self._images[rows[order]]
        out = {
            "target": self.targets[pos].astype(np.float32),
            "position": pos.astype(np.int64),
            "epoch": epoch,
            "batch": b,
        }
        if self.warp_in_worker:
            rng = batch_rng(self.seed, epoch, b) if self.train else None
            res = augment_batch_cpu(
                images, out_size=self.out_size, policy=self.policy, rng=rng, train=self.train
            )
            if self.normalise is not None:
                mean, std = self.normalise
                luts = intensity_luts(
                    len(images), gain=res["gain"], bias=res["bias"], mean=mean, std=std
                )
                out["images"], out["luts"] = res["images"], luts
            else:
                out["images"] = res["images"]
                if self.train:
                    out["gain"], out["bias"] = res["gain"], res["bias"]
        else:
            out["images"] = images
        return out


def _worker_init(_: int) -> None:
    # One process per core already; threads inside would oversubscribe. Not cv2.setNumThreads:
    # in a forked worker it tears down the thread pool copied from the parent and hangs for good
    # whenever the parent has run OpenCV in parallel before (cache build, eval warps).
    torch.set_num_threads(1)


def make_loader(
    cache: str | Path,
    index: pd.DataFrame,
    *,
    batch_size: int,
    out_size: int,
    policy,
    train: bool,
    seed: int = 0,
    workers: int = -1,
    warp_in_worker: bool = True,
    balanced: bool = False,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
    normalise: tuple[float, float] | None = None,
    targets: np.ndarray | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader of whole uint8 batches over the given `index` rows (see `CacheBatches`;
    `normalise=(mean, std)` adds each image's intensity lookup table). Batches carry
    `targets` (N,) (default: the `target` column; the trainer passes `Task.targets`),
    and `balanced` draws every class among them equally often."""
    targets = index["target"].to_numpy() if targets is None else np.asarray(targets)
    sampler = EpochBatchSampler(
        targets,
        batch_size,
        shuffle=train,
        seed=seed,
        balanced=balanced and train,
        rank=rank,
        world=world,
    )
    ds = CacheBatches(
        cache,
        index["row"].to_numpy(),
        targets,
        out_size,
        policy,
        train,
        seed,
        warp_in_worker,
        normalise,
    )
    # -1: one per core, at most 8 (more only add memory: a batch is one memory-map read)
    workers = default_workers(workers, cap=8)
    return torch.utils.data.DataLoader(
        ds,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


def eval_loader(
    cache: str | Path,
    rows: pd.DataFrame,
    *,
    config: Any,
    workers: int,
    warp_in_worker: bool,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """The loader of every evaluation pass over cache `rows`: in order, no augmentation, the
    run's `config` eval batch size and input size (a `Config`)."""
    return make_loader(
        cache,
        rows,
        batch_size=config.eval_batch_size,
        out_size=config.image_size,
        policy=AugmentPolicy.identity(),
        train=False,
        seed=config.seed,
        workers=workers,
        warp_in_worker=warp_in_worker,
        pin_memory=device.type == "cuda",
    )
