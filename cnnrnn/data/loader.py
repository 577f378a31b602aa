"""Batches drawn by index from uint8 tensors held in memory.

No per-sample PIL or ToTensor: a batch is one gather, one conversion to float and one
normalisation. Shuffling and augmentation are pure functions of (seed, epoch, batch index), so a
run resumed in the middle of an epoch sees exactly the batches it would have seen.

The images may live on a GPU (`IndexedBatches.to`): the gather, augmentation and normalisation
then run there. The random numbers are still drawn on the CPU, from the same seeds, so a batch
holds the same pixels on every device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cnnrnn.data.fashion_mnist import MEAN, STD


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (SplitMix64-style mixing), stable across runs."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p + 0x9E3779B97F4A7C15 + (x << 6) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Raw uint8 pixels (B, H, W) -> normalised float input (B, 1, H, W)."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2,
            flip: bool = True) -> torch.Tensor:
    """Random horizontal flips and translations by up to `max_shift` pixels (zero fill).

    images: (B, H, W) uint8; returns the same shape and dtype.
    """
    b, h, w = images.shape
    device = images.device  # the draws come from the CPU generator, then move here
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(device)
        images = torch.where(flipped[:, None, None], images.flip(-1), images)
    if max_shift:
        padded = torch.nn.functional.pad(images, (max_shift,) * 4)  # (B, H+2s, W+2s)
        dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(device)
        dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]  # (B, 1, W)
        images = padded[torch.arange(b, device=device)[:, None, None], rows, cols]
    return images


def random_erase(images: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                 area: tuple[float, float] = (0.02, 0.4), ratio: float = 3.0) -> torch.Tensor:
    """Random erasing (Zhong et al., AAAI 2020), vectorised over the batch.

    Each image, with probability `p`, gets one rectangle of `area` (a fraction of the image,
    drawn uniformly) and aspect ratio in [1/ratio, ratio] (log-uniform) filled with random
    pixels, the paper's best filling. images: (B, H, W) uint8; returns the same shape and dtype.
    """
    b, h, w = images.shape
    erase = torch.rand(b, generator=generator) < p
    frac = area[0] + (area[1] - area[0]) * torch.rand(b, generator=generator)
    log_aspect = (2 * torch.rand(b, generator=generator) - 1) * torch.log(torch.tensor(ratio))
    aspect = log_aspect.exp()
    eh = (frac * h * w * aspect).sqrt().round().long().clamp(1, h)
    ew = (frac * h * w / aspect).sqrt().round().long().clamp(1, w)
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    mask = erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
    noise = torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)
    device = images.device  # drawn on the CPU generator, applied where the images are
    return torch.where(mask.to(device), noise.to(device), images)


@dataclass
class IndexedBatches:
    """Shuffled mini-batches of (images, targets) for one epoch.

    images: (N, H, W) uint8; targets: (N, ...) any dtype. `drop_last` keeps every step the same
    size, so ms-per-step is comparable across epochs.
    """

    images: torch.Tensor
    targets: torch.Tensor
    batch_size: int
    seed: int
    augment: bool = False
    erase: float = 0.0  # random-erasing probability per image, applied after `augment`
    drop_last: bool = True

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to(self, device: torch.device) -> IndexedBatches:
        """The same batches with the images and targets held on `device` (a GPU's memory):
        each batch is then gathered, augmented and normalised there."""
        return dataclasses.replace(self, images=self.images.to(device),
                                   targets=self.targets.to(device))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches `start..len-1` of `epoch` as (x (B, 1, H, W) float, targets)."""
        order = torch.randperm(len(self.images),
                               generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.images.device)
            images = self.images[idx]
            if self.augment or self.erase:
                g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
                if self.augment:
                    images = augment(images, g)
                if self.erase:
                    images = random_erase(images, g, self.erase)
            yield to_input(images), self.targets[idx]


def sequential_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield x (B, 1, H, W) float over `images` in order, for evaluation."""
    for i in range(0, len(images), batch_size):
        yield to_input(images[i:i + batch_size])
