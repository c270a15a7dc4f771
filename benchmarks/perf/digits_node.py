"""The tiny digits node the perf scripts run (8x8 images, two or three tasks), scaled in width."""
from __future__ import annotations

TASKS = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5"]},
         {"name": "c", "classes": ["6", "7", "8", "9"]}]


def digits_node(seed: int, scale: int = 1, tasks: int = 2, epochs: int = 2, method: str = "packnet",
                **sections: dict) -> dict:
    """A node config mapping; ``scale`` multiplies every width of the model (token, latent, query and head
    dimensions); ``sections``: the node's other sections (node, selection, transfer, ...)."""
    w = 32 * scale
    return {
        "seed": seed,
        "data": {"source": "digits", "modality": "image", "image_size": 8},
        "tasks": TASKS[:tasks],
        "model": {"token_dim": w, "num_latents": 8, "latent_dim": w, "depth": 1, "cross_dim_head": w // 2,
                  "latent_heads": 2, "latent_dim_head": w // 2, "queries_dim": w, "image": {"channels": 1, "patch_size": 2}},
        "method": {"name": method},
        "train": {"epochs": epochs, "batch_size": 64},
        **sections,
    }
