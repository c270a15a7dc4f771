"""The Classify RPC's work, from the published snapshot only: raw items checked and decoded within
bounds, each finished task folded once per snapshot, logits on the node's device.

Bounds (a caller's bytes are untrusted): at most ``MAX_ITEMS`` items per request; an image of at
most ``MAX_IMAGE_BYTES`` whose header declares at most ``MAX_PIXELS`` pixels (checked before any pixel
is decoded, so a small file that expands to 100 megapixels costs a header read); a string of at most
``MAX_TEXT_CHARS`` characters. The request as a whole is bounded by the server's message size.
"""
from __future__ import annotations

import io
import threading
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from crossback.config.data import View
from crossback.data.tasks import image_inputs, load_image, text_inputs
from crossback.models.inference import Prediction, TaskModel, classify, task_model

from .snapshot import Snapshot

MAX_ITEMS = 256
MAX_IMAGE_BYTES = 4 << 20
MAX_PIXELS = 4096 * 4096
MAX_TEXT_CHARS = 4096


class ItemError(ValueError):
    """Item ``index`` of a request cannot be classified; the message says why."""

    def __init__(self, index: int, why: str):
        self.index = index
        super().__init__(f"item {index}: {why}")


def decode_image(index: int, data: bytes, view: View) -> np.ndarray:
    """One image file's bytes as training reads a file (``load_image``), within the bounds."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ItemError(index, f"{len(data)} bytes; at most {MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns above 89 megapixels: ours, below it, refuses first
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ItemError(index, f"declares {width} x {height} pixels; at most {MAX_PIXELS}")
        image = image.convert("L" if view.channels == 1 else "RGB")
    except ItemError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise ItemError(index, f"not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return load_image(np.asarray(image), view)


def encode_request(images: list[bytes], texts: list[str], view: View) -> Tensor:
    """The model's inputs for a request's items; ItemError names the first one at fault."""
    if images and texts:
        raise ItemError(0, "a request carries images or texts, not both")
    count = len(images) + len(texts)
    if not 0 < count <= MAX_ITEMS:
        raise ItemError(0, f"a request carries 1-{MAX_ITEMS} items, not {count}")
    if view.modality == "image":
        if texts:
            raise ItemError(0, "this node's tasks are image tasks: send images, not texts")
        return image_inputs([decode_image(i, b, view) for i, b in enumerate(images)], view)
    if images:
        raise ItemError(0, "this node's tasks are text tasks: send texts, not images")
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise ItemError(i, f"a string of {len(text)} characters; at most {MAX_TEXT_CHARS}")
    return text_inputs(texts, view)


def activation_bytes(count: int, cfg, view: View) -> int:
    """An upper estimate of what one batch of ``count`` items holds while it runs (float32); ``cfg``:
    the model's PerceiverConfig."""
    patch = max(1, cfg.image.patch_size)
    tokens = -(-view.image_size // patch) ** 2 if view.modality == "image" else view.text_max_length
    return count * 4 * 8 * (tokens * max(cfg.token_dim, cfg.kv_dim) + cfg.num_latents * cfg.latent_dim)


class ClassifyService:
    """Folds each (snapshot, task) once, however many callers ask; a new snapshot drops the old ones."""

    def __init__(self, view: View, device: torch.device | str = "cpu"):
        self.view, self.device = view, torch.device(device)
        self._lock = threading.Lock()
        self._models: dict[tuple[int, int], TaskModel] = {}

    def model(self, snap: Snapshot, index: int) -> TaskModel:
        key = (snap.version, index)
        with self._lock:
            if key not in self._models:
                self._models = {k: m for k, m in self._models.items() if k[0] == snap.version}
                self._models[key] = task_model(snap.learner, index, self.view, self.device)
            return self._models[key]

    def run(self, snap: Snapshot, index: int, inputs: Tensor, top: int) -> list[Prediction]:
        return classify(self.model(snap, index), inputs, top)
