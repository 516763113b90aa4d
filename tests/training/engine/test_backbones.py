"""build_model: weights from local files, random init, and readable errors for bad files."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from training.engine import WeightsError, build_model


def test_random_init_and_data_config():
    model, data_config = build_model("test_resnet", 4, "none", in_chans=1)
    assert model.num_classes == 4
    assert data_config.input_size[0] == 1 and len(data_config.std) == 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_state_dict_is_loaded_and_head_replaced(tmp_path, suffix):
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, _ = build_model("test_resnet", 3, path)
    assert model.num_classes == 3
    loaded, original = model.state_dict(), source.state_dict()
    for key in original:
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], original[key]), key


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("test_resnet", 2, tmp_path / "nowhere.pth")


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01definitely not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        build_model("test_resnet", 2, path)
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="corrupt"):
        build_model("test_resnet", 2, path)


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit test_resnet"):
        build_model("test_resnet", 2, path)


def test_weights_with_missing_keys(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    state.pop(next(iter(state)))
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="1 missing keys"):
        build_model("test_resnet", 2, path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError):
        build_model("test_resnet", 2, path)


def test_unknown_weights_suffix_and_model(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(WeightsError, match="should end in"):
        build_model("test_resnet", 2, path)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("no_such_net", 2, "none")
