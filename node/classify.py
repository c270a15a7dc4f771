"""The Classify RPC's work, from the published snapshot only: raw items checked and decoded within
bounds, each finished task folded once per snapshot, logits on the node's device.

A caller's bytes are untrusted, and a request's cost is known before any pixel is decoded
(``plan_request`` reads every image's header first):

- at most ``MAX_ITEMS`` items; an image of at most ``MAX_IMAGE_BYTES`` bytes declaring at most
  ``data.images.MAX_DECLARED_PIXELS``; a string of at most ``MAX_TEXT_CHARS`` characters;
- the pixels a request decodes (a JPEG at the reduced scale ``data.images`` picks) at most
  ``pixel_budget``: sized from what the model reads (every image is resized to its view), never less
  than one camera frame, never more than ``MAX_REQUEST_PIXELS`` (about half a CPU-second of decoding
  on a laptop core);
- the memory the decode holds is known up front (``RequestPlan.held_bytes``), for the server to
  reserve before decoding;
- ``RequestPlan.inputs`` and ``ClassifyService.run`` call ``check`` between items and between batches,
  so the work stops once the caller has gone or its deadline has passed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torch import Tensor

from crossback.config.data import View
from crossback.data.images import HELD_BYTES_PER_PIXEL, ImageProblem, decoded_pixels, open_image, to_array
from crossback.data.tasks import image_inputs, text_inputs
from crossback.models.inference import Prediction, TaskModel, classify, task_model

from .snapshot import Snapshot

MAX_ITEMS = 256
MAX_IMAGE_BYTES = 4 << 20
MAX_TEXT_CHARS = 4096
FRAME_PIXELS = 6000 * 4000  # a 24-megapixel camera frame: one always fits a request
OVERSIZE = 16 * 16  # an item may decode up to 16x the view's side (each way) within the budget
MAX_REQUEST_PIXELS = 2 * FRAME_PIXELS
BATCH = 32  # items per forward pass: how often a long request looks for a gone caller


class ItemError(ValueError):
    """Item ``index`` of a request cannot be classified; the message says why."""

    def __init__(self, index: int, why: str):
        self.index = index
        super().__init__(f"item {index}: {why}")


class OverBudget(ItemError):
    """The request decodes more pixels than its budget: a smaller or fewer-item request can pass."""


def pixel_budget(count: int, view: View) -> int:
    """Pixels a request of ``count`` images may decode in all."""
    return min(MAX_REQUEST_PIXELS, max(FRAME_PIXELS, count * OVERSIZE * view.image_size ** 2))


@dataclass
class RequestPlan:
    """A checked request whose cost is known: ``inputs`` does the decoding."""
    view: View
    count: int
    held_bytes: int  # memory the decode holds at its peak (the largest image, and the inputs)
    images: list[Image.Image]
    texts: list[str]

    def inputs(self, check: Callable[[], None] = lambda: None) -> Tensor:
        if self.texts:
            check()
            return text_inputs(self.texts, self.view)
        arrays = []
        try:
            for i, image in enumerate(self.images):
                check()
                try:
                    arrays.append(to_array(image, self.view))
                except ImageProblem as exc:
                    raise ItemError(i, str(exc)) from None
        finally:
            self.close()
        return image_inputs(arrays, self.view)

    def close(self) -> None:
        for image in self.images:
            image.close()


def plan_request(images: list[bytes], texts: list[str], view: View) -> RequestPlan:
    """A request's items checked and their decode cost counted from their headers; ItemError names the
    first item at fault (OverBudget where the request as a whole decodes too much)."""
    if images and texts:
        raise ItemError(0, "a request carries images or texts, not both")
    count = len(images) + len(texts)
    if not 0 < count <= MAX_ITEMS:
        raise ItemError(0, f"a request carries 1-{MAX_ITEMS} items, not {count}")
    if view.modality != "image":
        if images:
            raise ItemError(0, "this node's tasks are text tasks: send texts, not images")
        for i, text in enumerate(texts):
            if len(text) > MAX_TEXT_CHARS:
                raise ItemError(i, f"a string of {len(text)} characters; at most {MAX_TEXT_CHARS}")
        return RequestPlan(view, count, 0, [], texts)
    if texts:
        raise ItemError(0, "this node's tasks are image tasks: send images, not texts")
    opened: list[Image.Image] = []
    plan = RequestPlan(view, count, 0, opened, [])
    try:
        budget, total, largest = pixel_budget(count, view), 0, 0
        for i, data in enumerate(images):
            if len(data) > MAX_IMAGE_BYTES:
                raise ItemError(i, f"{len(data)} bytes; at most {MAX_IMAGE_BYTES}")
            try:
                opened.append(open_image(data, view))
            except ImageProblem as exc:
                raise ItemError(i, str(exc)) from None
            pixels = decoded_pixels(opened[-1])
            total += pixels
            largest = max(largest, pixels)
            if total > budget:
                raise OverBudget(i, f"the images up to this one decode to {total / 1e6:.1f} megapixels; a request "
                                    f"of {count} images to a {view.image_size} x {view.image_size} model decodes at "
                                    f"most {budget / 1e6:.1f} (send images nearer the model's size, or fewer "
                                    "per request)")
    except ItemError:
        plan.close()
        raise
    plan.held_bytes = largest * HELD_BYTES_PER_PIXEL + count * view.channels * view.image_size ** 2
    return plan


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

    def run(self, snap: Snapshot, index: int, inputs: Tensor, top: int,
            check: Callable[[], None] = lambda: None) -> list[Prediction]:
        return classify(self.model(snap, index), inputs, top, batch_size=BATCH, check=check)
