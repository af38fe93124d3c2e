"""Weight files in every published layout load strictly; the architecture is recognised; junk is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdserver.engines.upscale.archs import OFFICIAL_MODELS, ArchSpec, RRDBNet, SRVGGNetCompact
from sdserver.engines.upscale.runner import load_upscaler
from sdserver.engines.upscale.tiny import LAYOUTS, seeded_state_dict, write_official_weights, write_weights
from sdserver.engines.upscale.weights import (
    UnsupportedWeightsError,
    build_network,
    detect_arch,
    find_weights,
    list_weight_ids,
    load_network,
    read_state_dict,
)

MODEL_IDS = sorted(OFFICIAL_MODELS)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_every_published_model_loads_in_every_layout(tmp_path: Path, model_id: str, layout: str) -> None:
    path = write_official_weights(tmp_path, model_id, layout, seed=3)  # type: ignore[arg-type]
    upscaler = load_upscaler(path, precision="fp32")
    assert upscaler.spec == OFFICIAL_MODELS[model_id]
    expected = seeded_state_dict(OFFICIAL_MODELS[model_id], seed=3)
    loaded = upscaler.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    assert not any(parameter.requires_grad for parameter in upscaler.model.parameters())
    assert not upscaler.model.training


def test_published_parameter_names_and_shapes() -> None:
    x4 = RRDBNet().state_dict()
    assert x4["conv_first.weight"].shape == (64, 3, 3, 3)
    assert x4["body.22.rdb3.conv5.weight"].shape == (64, 192, 3, 3)
    assert {"conv_body.weight", "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.bias"} <= x4.keys()
    assert len(x4) == 2 + 23 * 3 * 5 * 2 + 5 * 2
    assert RRDBNet(scale=2).state_dict()["conv_first.weight"].shape == (64, 12, 3, 3)
    assert RRDBNet(scale=1).state_dict()["conv_first.weight"].shape == (64, 48, 3, 3)
    compact = SRVGGNetCompact(num_conv=32).state_dict()
    assert compact["body.1.weight"].shape == (64,)  # PReLU slopes between the convs
    assert compact["body.66.weight"].shape == (48, 64, 3, 3)
    assert max(int(name.split(".")[1]) for name in compact) == 66


@pytest.mark.parametrize(
    "spec",
    [
        ArchSpec("rrdb", 1, num_block=2, num_feat=32, num_grow_ch=16),
        ArchSpec("rrdb", 2, num_block=3),
        ArchSpec("srvgg", 2, num_conv=4, num_feat=16),
        ArchSpec("srvgg", 3, num_conv=16),
    ],
    ids=lambda spec: spec.describe(),
)
def test_architecture_is_recognised_from_keys_and_shapes(spec: ArchSpec) -> None:
    assert detect_arch(seeded_state_dict(spec)) == spec


def test_native_scale_is_what_the_network_does(tmp_path: Path) -> None:
    for model_id, spec in OFFICIAL_MODELS.items():
        network, _ = load_network(write_official_weights(tmp_path, model_id, "bare"))
        with torch.inference_mode():
            assert network(torch.rand(1, 3, 8, 12)).shape == (1, 3, 8 * spec.scale, 12 * spec.scale)


def test_params_ema_is_preferred_over_params(tmp_path: Path) -> None:
    spec = OFFICIAL_MODELS["realesr-general-x4v3"]
    ema, raw = seeded_state_dict(spec, seed=1), seeded_state_dict(spec, seed=2)
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "both.pth")
    state = read_state_dict(tmp_path / "both.pth")
    assert torch.equal(state["body.0.weight"], ema["body.0.weight"])


def test_data_parallel_prefix_is_dropped(tmp_path: Path) -> None:
    state = seeded_state_dict(OFFICIAL_MODELS["realesr-general-x4v3"])
    torch.save({f"module.{name}": value for name, value in state.items()}, tmp_path / "dp.pth")
    _, spec = load_network(tmp_path / "dp.pth")
    assert spec == OFFICIAL_MODELS["realesr-general-x4v3"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("noise.pth", b"\x00\x01not a pickle at all" * 10, "not a readable PyTorch weight file"),
        ("text.safetensors", b"hello, I am not safetensors", "not a readable safetensors file"),
        ("empty.pth", b"", "not a readable PyTorch weight file"),
    ],
    ids=["pth-noise", "safetensors-text", "empty"],
)
def test_unreadable_files_are_unsupported(tmp_path: Path, name: str, content: bytes, words: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UnsupportedWeightsError, match=words):
        load_network(tmp_path / name)


def test_unknown_architecture_is_unsupported(tmp_path: Path) -> None:
    save_file({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, tmp_path / "other.safetensors")
    with pytest.raises(UnsupportedWeightsError, match="match no known upscaler architecture"):
        load_network(tmp_path / "other.safetensors")


def test_pickled_non_tensor_content_is_unsupported(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UnsupportedWeightsError, match="not a state dict"):
        load_network(tmp_path / "list.pth")


def test_missing_or_misshapen_parameters_are_unsupported() -> None:
    state = seeded_state_dict(OFFICIAL_MODELS["RealESRGAN_x4plus_anime_6B"])
    del state["conv_hr.weight"]
    with pytest.raises(UnsupportedWeightsError, match=r"do not fit RRDBNet x4 \(6 blocks"):
        build_network(state)
    compact = seeded_state_dict(OFFICIAL_MODELS["realesr-general-x4v3"])
    compact["body.66.weight"] = torch.zeros(47, 64, 3, 3)
    with pytest.raises(UnsupportedWeightsError, match="no pixel-shuffle upscale"):
        build_network(compact)


def test_non_rgb_networks_are_refused() -> None:
    state = seeded_state_dict(ArchSpec("srvgg", 2, num_conv=2, num_feat=8, num_in_ch=1, num_out_ch=1))
    with pytest.raises(UnsupportedWeightsError, match="takes 1 channels"):
        build_network(state)


def test_weight_files_are_found_by_model_id(tmp_path: Path) -> None:
    assert find_weights(tmp_path / "absent", "x") is None
    assert list_weight_ids(tmp_path / "absent") == set()
    write_weights(tmp_path, "4x-Custom", ArchSpec("srvgg", 4, num_conv=2, num_feat=8), "params")
    write_official_weights(tmp_path, "realesr-general-x4v3", "safetensors")
    write_official_weights(tmp_path, "realesr-general-x4v3", "params")
    (tmp_path / "notes.txt").write_text("not weights")
    assert list_weight_ids(tmp_path) == {"4x-Custom", "realesr-general-x4v3"}
    assert find_weights(tmp_path, "realesr-general-x4v3") == tmp_path / "realesr-general-x4v3.safetensors"
    assert find_weights(tmp_path, "4x-Custom") == tmp_path / "4x-Custom.pth"
