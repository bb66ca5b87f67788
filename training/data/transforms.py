"""Training augmentation on the model grid (MONAI dictionary transforms).

Everything here runs after `models.contract.prepare_input`, on tensors laid out as
``image (M, D, H, W)`` and masks ``(1, D, H, W)``, so image and masks move together:
spatial transforms use the same random draw for every key (nearest neighbour for masks).
Intensity changes touch only the channels marked present, so a missing modality stays an
all-zero channel as the contract says.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, MapTransform, RandAffined, RandFlipd, Randomizable


class RandPresentIntensityd(Randomizable, MapTransform):
    """Random per-channel intensity scale ``(1 + s)`` and shift ``o`` of the present channels.

    Args:
        keys: image keys (each ``(M, D, H, W)``); every key gets the same draw.
        present_key: the ``(M,)`` presence vector; channels with 0 are left untouched.
        scale: s is drawn from ``U(-scale, scale)``.
        shift: o is drawn from ``U(-shift, shift)`` (in normalised units).
        prob: probability of applying the transform.
    """

    def __init__(
        self,
        keys: Sequence[str],
        present_key: str = "present",
        scale: float = 0.1,
        shift: float = 0.05,
        prob: float = 0.5,
    ) -> None:
        MapTransform.__init__(self, keys)
        if scale < 0 or shift < 0 or not 0 <= prob <= 1:
            raise ValueError(f"need scale, shift >= 0 and prob in [0, 1], got {scale=}, {shift=}, {prob=}")
        self.present_key = present_key
        self.scale, self.shift, self.prob = scale, shift, prob
        self._apply = False
        self._factors = np.ones(1)
        self._offsets = np.zeros(1)

    def randomize(self, data: Any = None) -> None:
        channels = int(data)
        self._apply = self.R.random() < self.prob
        self._factors = 1.0 + self.R.uniform(-self.scale, self.scale, size=channels)
        self._offsets = self.R.uniform(-self.shift, self.shift, size=channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = torch.as_tensor(d[self.present_key]).float()
        self.randomize(present.numel())
        if not self._apply:
            return d
        factors = torch.as_tensor(self._factors, dtype=torch.float32) * present + (1 - present)
        offsets = torch.as_tensor(self._offsets, dtype=torch.float32) * present
        view = (-1,) + (1,) * 3
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            d[key] = image * factors.view(view) + offsets.view(view)
        return d


def train_transforms(
    image_keys: Sequence[str],
    mask_keys: Sequence[str],
    *,
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] = (0, 1, 2),
    affine_prob: float = 0.5,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    translate_vox: float = 4.0,
    intensity_prob: float = 0.5,
) -> Compose:
    """The training augmentation: flips, a small affine, intensity scale and shift.

    Args:
        image_keys: keys of ``(M, D, H, W)`` images (bilinear).
        mask_keys: keys of ``(1, D, H, W)`` masks (nearest neighbour).
        flip_axes: spatial axes (0 = D, 1 = H, 2 = W) each flipped with `flip_prob`.
        rotate_deg, scale, translate_vox: ranges of the random affine.
    """
    keys = [*image_keys, *mask_keys]
    modes = ["bilinear"] * len(image_keys) + ["nearest"] * len(mask_keys)
    rotate = float(np.deg2rad(rotate_deg))
    steps: list[Any] = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in flip_axes]
    steps.append(
        RandAffined(
            keys=keys,
            prob=affine_prob,
            rotate_range=(rotate, rotate, rotate),
            scale_range=(scale, scale, scale),
            translate_range=(translate_vox, translate_vox, translate_vox),
            mode=modes,
            padding_mode="zeros",
        )
    )
    steps.append(RandPresentIntensityd(keys=list(image_keys), prob=intensity_prob))
    return Compose(steps)
