"""Attributions of the predicted class, each a map in tensor layout over the model grid.

- gradcam: Grad-CAM (Selvaraju et al., 2017) on the last-stage `features` output of the
  PyTorch network from the card's weights: channel weights are the spatial mean of the
  class logit's gradient; the map is ReLU of the weighted sum (feature-grid resolution).
- integrated_gradients: captum `IntegratedGradients` from a blurred copy of the input
  (Gaussian, sigma BASELINE_SIGMA voxels: the coarse intensities stay, the structure goes),
  summed over channels, signed (full resolution): by completeness its sum is the class
  logit's rise from that baseline, which the region graph splits by region
  (`app.explain.graph`); the map shown is its magnitude. Not an all-zero baseline: the
  students normalize each channel (instance norm), so every scaled copy of the input looks
  the same to them and the whole rise would sit in a jump next to zero that no quadrature
  sees; the sums would then not add up.
- occlusion: through ONNX Runtime, so it explains exactly the served graph: blocks of the
  input are zeroed in turn and the drop of the class probability is the block's score.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from app.explain.case import StoredCase
from app.runtime import ServedModel

METHODS = ("gradcam", "integrated_gradients", "occlusion")
IG_STEPS = 32
BASELINE_SIGMA = 6.0  # voxels of the model grid
OCCLUSION_BLOCKS = (3, 3, 3)  # blocks along D, H, W


def _tensors(case: StoredCase) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(case.image[None].copy()), torch.from_numpy(case.present[None].copy())


def gradcam(network: Any, case: StoredCase) -> np.ndarray:
    import torch

    image, present = _tensors(case)
    with torch.enable_grad():
        out = network(image, present)
        features = out.features
        (gradient,) = torch.autograd.grad(out.logits[0, case.class_index], features)
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1))[0]
    return cam.detach().numpy().astype(np.float32)


def integrated_gradients(network: Any, case: StoredCase) -> tuple[np.ndarray, float]:
    """Signed attribution (D, H, W), channels summed, and the logit's rise it should add up to."""
    import torch
    from captum.attr import IntegratedGradients

    image, present = _tensors(case)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return network(x, present.expand(x.shape[0], -1)).logits

    baseline = torch.from_numpy(blurred(case.image)[None])
    attribution = IntegratedGradients(forward).attribute(
        image,
        baselines=baseline,
        target=case.class_index,
        n_steps=IG_STEPS,
        internal_batch_size=4,
    )
    with torch.no_grad():
        logits = forward(torch.cat([image, baseline]))[:, case.class_index]
    rise = float(logits[0] - logits[1])
    return attribution[0].sum(dim=0).detach().numpy().astype(np.float32), rise


def blurred(image: np.ndarray) -> np.ndarray:
    """The integrated-gradients baseline: each channel blurred, in the input's layout."""
    from scipy.ndimage import gaussian_filter

    sigma = (0, BASELINE_SIGMA, BASELINE_SIGMA, BASELINE_SIGMA)
    return gaussian_filter(image.astype(np.float32), sigma=sigma, mode="nearest")


def occlusion(model: ServedModel, case: StoredCase) -> np.ndarray:
    from app.outcome import softmax

    target = case.class_index
    base = float(case.outputs["probabilities"][target])
    shape = case.image.shape[1:]
    edges = [
        np.linspace(0, s, n + 1).round().astype(int) for s, n in zip(shape, OCCLUSION_BLOCKS, strict=True)
    ]
    blocks = list(itertools.product(*(range(n) for n in OCCLUSION_BLOCKS)))
    scores = np.zeros(OCCLUSION_BLOCKS, dtype=np.float32)
    batch = 9
    for start in range(0, len(blocks), batch):
        chunk = blocks[start : start + batch]
        images = np.repeat(case.image[None], len(chunk), axis=0)
        for n, (a, b, c) in enumerate(chunk):
            images[
                n,
                :,
                edges[0][a] : edges[0][a + 1],
                edges[1][b] : edges[1][b + 1],
                edges[2][c] : edges[2][c + 1],
            ] = 0
        logits = model.run(images, np.repeat(case.present[None], len(chunk), axis=0))["logits"]
        for n, block in enumerate(chunk):
            scores[block] = base - float(softmax(logits[n].astype(np.float64))[target])
    return scores


def compute(method: str, case: StoredCase, model: ServedModel) -> tuple[np.ndarray, float | None]:
    """The method's map and, for integrated gradients, the logit rise its sum should equal."""
    if method == "gradcam":
        return gradcam(model.torch_model(), case), None
    if method == "integrated_gradients":
        return integrated_gradients(model.torch_model(), case)
    return occlusion(model, case), None
