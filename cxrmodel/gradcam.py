"""Grad-CAM (Selvaraju et al. 2017) for one finding: where in the film the model looked.

The map is taken at the last dense block's output (after `norm5`, the 7x7 grid for 224 input),
weighted by the spatially averaged gradient of the chosen finding's logit, rectified, upsampled
to the input size and scaled to [0, 1]. It is computed in fp32 eager mode with gradients, never
through the reduced-precision inference backends, because it is produced rarely (one overlay per
study) and must be faithful to the model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ModelError
from .labels import LABELS, index_of
from .network import ChestNet


def gradcam(model: ChestNet, tensor: torch.Tensor, label: str | int) -> np.ndarray:
    """HxW float32 heatmap in [0, 1] for one (C, H, W) input and one finding (name or index).

    An all-zero map means no region raised the finding's score (every weighted activation was
    negative), which is a valid answer, not an error.
    """
    if isinstance(label, str):
        try:
            idx = index_of(label)
        except KeyError as exc:
            raise ModelError(str(exc.args[0])) from None
    else:
        idx = int(label)
        if not 0 <= idx < len(LABELS):
            raise ModelError(f"label index {idx} outside 0..{len(LABELS) - 1}")
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ModelError(f"gradcam takes one (C, H, W) image, got shape {tuple(tensor.shape)}")

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = tensor[None].float().detach()
            activations = model.features(x)          # (1, K, h, w), after norm5
            activations.retain_grad()
            pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(activations), 1), 1)
            score = model.head(pooled)[0, idx]
            model.zero_grad(set_to_none=True)
            score.backward()
            grads = activations.grad
    finally:
        model.train(was_training)
    weights = grads.mean(dim=(2, 3), keepdim=True)   # (1, K, 1, 1)
    cam = F.relu((weights * activations.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(tensor.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.clamp(0.0, 1.0).numpy().astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """An RGB uint8 picture: the [0, 1] grayscale radiograph with the heatmap in red-yellow on top.

    `heatmap` is resized to the image. Used to build the Secondary Capture sent back to the PACS.
    """
    if image.ndim != 2:
        raise ModelError("overlay needs a 2-D grayscale image")
    h = torch.as_tensor(heatmap, dtype=torch.float32)[None, None]
    h = F.interpolate(h, size=image.shape, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    gray = np.clip(image, 0, 1)[..., None].repeat(3, axis=2)
    color = np.stack([np.ones_like(h), h, np.zeros_like(h)], axis=2)  # red (low) -> yellow (high)
    a = (alpha * h)[..., None]
    return (np.clip(gray * (1 - a) + color * a, 0, 1) * 255).round().astype(np.uint8)
