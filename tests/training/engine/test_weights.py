"""The packaged EfficientNet-Lite0 weights convert to timm's layout and are the real ones."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from training.engine import ItemDataset, ItemSet, Preprocessing, build_model, predict
from training.engine.weights import (
    WeightsError,
    convert_state_dict,
    converted_weights_path,
    packaged_checkpoint,
)

ESPRESSO = 967


def test_conversion_renames_every_key_and_loads_strictly(weights_cache):
    source = torch.load(packaged_checkpoint("tf_efficientnet_lite0"), weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    converted = convert_state_dict(source, model)
    assert set(converted) == set(model.state_dict())
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    path = converted_weights_path("tf_efficientnet_lite0", weights_cache)
    saved = load_file(str(path))
    assert set(saved) == set(converted)
    assert torch.equal(
        saved["blocks.5.3.conv_pwl.weight"], source["_blocks.14._project_conv.weight"]
    )


def test_conversion_is_cached_and_leaves_no_temporary_files(weights_cache):
    first = converted_weights_path("tf_efficientnet_lite0", weights_cache)
    stamp = first.stat().st_mtime_ns
    second = converted_weights_path("tf_efficientnet_lite0", weights_cache)
    assert second == first and second.stat().st_mtime_ns == stamp
    assert [p.name for p in weights_cache.iterdir()] == [first.name]


def test_damaged_cache_file_is_rebuilt(tmp_path):
    target = tmp_path / "tf_efficientnet_lite0.imagenet.safetensors"
    target.write_bytes(b"not a safetensors file")
    path = converted_weights_path("tf_efficientnet_lite0", tmp_path)
    assert len(load_file(str(path))) > 100


def test_default_backbone_recognises_espresso_on_coffee(weights_cache):
    skimage_data = pytest.importorskip("skimage.data")
    model, data_config = build_model(
        "tf_efficientnet_lite0", 1000, "imagenet", cache_dir=weights_cache
    )
    assert data_config.mean == (0.5, 0.5, 0.5) and data_config.std == (0.5, 0.5, 0.5)
    assert data_config.interpolation == "bicubic"
    preprocessing = Preprocessing.for_model(data_config, 224)
    coffee = ItemDataset(ItemSet([skimage_data.coffee()]), 1000, preprocessing)
    probabilities = predict(model, coffee)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert probabilities[ESPRESSO] > 0.8


def test_unknown_model_has_no_packaged_weights():
    with pytest.raises(WeightsError, match="no packaged offline weights"):
        packaged_checkpoint("resnet18")


def test_grayscale_stem_keeps_pretrained_features(weights_cache):
    rgb, _ = build_model("tf_efficientnet_lite0", 2, "imagenet", cache_dir=weights_cache)
    gray, data_config = build_model(
        "tf_efficientnet_lite0", 2, "imagenet", in_chans=1, cache_dir=weights_cache
    )
    assert data_config.in_chans == 1 and len(data_config.mean) == 1
    stem_rgb = rgb.conv_stem.weight.detach()
    stem_gray = gray.conv_stem.weight.detach()
    assert stem_gray.shape[1] == 1
    # timm folds the RGB filters into one channel by summing them
    np.testing.assert_allclose(stem_gray[:, 0], stem_rgb.sum(dim=1), rtol=1e-5, atol=1e-6)
    assert torch.equal(rgb.blocks[3][0].conv_dw.weight, gray.blocks[3][0].conv_dw.weight)


def test_fresh_head_starts_small_and_pretrained_head_is_kept(weights_cache):
    # timm's Google-style init would give a 2-class head weights of about +-0.7
    model, _ = build_model("tf_efficientnet_lite0", 2, "imagenet", cache_dir=weights_cache)
    assert model.classifier.weight.std().item() < 0.02
    assert not model.classifier.bias.any()
    full, _ = build_model("tf_efficientnet_lite0", 1000, "imagenet", cache_dir=weights_cache)
    saved = load_file(str(converted_weights_path("tf_efficientnet_lite0", weights_cache)))
    assert torch.equal(full.classifier.weight, saved["classifier.weight"])
