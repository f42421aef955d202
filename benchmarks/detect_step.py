"""Training throughput of the box detector (`pneumolib.detect`, FCOS on a ResNet18-FPN): images
per second of full training steps (forward, loss, backward, optimiser) on ready tensors, against
the classifier's (the same ResNet18, the same images) in the same run, and the ratio.

Usage: python benchmarks/detect_step.py [--device cuda] [--size 512] [--batch 16] [--steps 20]
Prints one line `detect step: X img/s (classifier Y img/s, ratio Y/X), SIZE px, batch B, amp A`
(gpu_check.sh's detector stage reads it). Synthetic images with one to two boxes each, half
without any; AMP (bf16 where supported) on a GPU. No figure is written to results/: a GPU run
of gpu_check.sh reports it.
"""

from __future__ import annotations

import argparse
import time

import torch

from pneumolib.core.models import build_model
from pneumolib.core.runtime import amp_dtype, resolve_device
from pneumolib.detect.model import box_label, build_detector


def _targets(batch: int, size: int, gen: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Half the images with one or two boxes (xyxy), half negatives (no box)."""
    out = []
    for i in range(batch):
        n = 0 if i % 2 else 1 + int(torch.randint(0, 2, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = size * (0.1 + 0.2 * torch.rand(n, 2, generator=gen))
        out.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.full((n,), box_label(), dtype=torch.int64),
            }
        )
    return out


def _rate(step, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    amp = amp_dtype(device, True)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, 1, a.size, a.size, generator=gen).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in _targets(a.batch, a.size, gen)]
    y = torch.tensor([float(len(t["boxes"]) > 0) for t in targets], device=device)[:, None]
    det = build_detector(image_size=a.size, mean=0.5, std=0.25).to(device).train()
    clf = build_model("resnet18", "finetune", "none").to(device).train()

    def stepper(model, loss_of):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = loss_of(model)
            loss.backward()
            opt.step()

        return step

    det_step = stepper(det, lambda m: sum(m(list(x), targets).values()))
    clf_step = stepper(
        clf, lambda m: torch.nn.functional.binary_cross_entropy_with_logits(m(x).float(), y)
    )
    det_rate = _rate(det_step, a.steps, a.warmup, a.batch, device)
    clf_rate = _rate(clf_step, a.steps, a.warmup, a.batch, device)
    print(
        f"detect step: {det_rate:,.1f} img/s (classifier {clf_rate:,.1f} img/s, ratio "
        f"{clf_rate / det_rate:.1f}x), {a.size} px, batch {a.batch}, amp {amp}, device {device}"
    )


if __name__ == "__main__":
    main()
