import torch

from crossback.models.adapters import CLS_ID, PAD_ID, SEP_ID, ImageAdapter, fourier_positions
from crossback.config.model import ImageAdapterConfig
from crossback.models.text_encoders import encode_utf8
from crossback.models.learner import ContinualLearner

from conftest import tiny_config


def test_image_any_resolution_only_changes_token_count():
    adapter = ImageAdapter(ImageAdapterConfig(channels=3, patch_size=4), token_dim=24)
    for h, w, n in [(32, 32, 64), (16, 48, 48), (30, 30, 64)]:  # 30x30 is zero-padded to 32x32
        tokens, mask = adapter(torch.rand(2, 3, h, w))
        assert tokens.shape == (2, n, 24) and mask is None


def test_uint8_and_float_pixels_give_the_same_tokens():
    adapter = ImageAdapter(ImageAdapterConfig(channels=1, patch_size=2), token_dim=8)
    pixels = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(adapter(pixels)[0], adapter(pixels.float() / 255.0)[0])


def test_fourier_positions_cover_both_axes():
    pos = fourier_positions(3, 5, num_bands=4, max_freq=8.0)
    assert pos.shape == (15, 2 * (2 * 4 + 1))
    assert torch.equal(pos[:, 8], torch.linspace(-1, 1, 3).repeat_interleave(5))  # raw row coordinate


def test_utf8_ids_follow_perceiver_tokenizer():
    ids, mask = encode_utf8(["hé", ""], max_length=6)
    assert ids[0].tolist() == [CLS_ID, ord("h") + 6, 0xC3 + 6, 0xA9 + 6, SEP_ID, PAD_ID]
    assert ids[1].tolist() == [CLS_ID, SEP_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert mask.tolist()[1] == [True, True, False, False, False, False]
    long_ids, _ = encode_utf8(["x" * 50], max_length=8)
    assert long_ids[0, -1] == SEP_ID  # truncated, still closed


def test_padding_does_not_change_text_logits():
    learner = ContinualLearner(tiny_config(), "text", "packnet")
    learner.begin_task("t", 3)
    short, _ = encode_utf8(["grinning face", "red apple"], max_length=20)
    longer, _ = encode_utf8(["grinning face", "red apple"], max_length=40)
    with torch.no_grad():
        assert torch.allclose(learner.logits(short, 0), learner.logits(longer, 0), atol=1e-5)
