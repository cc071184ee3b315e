import json
import struct

import pytest
import torch

from napari_unet_tuner import (
    Checkpoint,
    CheckpointError,
    ModelConfig,
    UNet,
    import_state_dict,
    load_checkpoint,
    new_card,
    save_checkpoint,
)
from napari_unet_tuner.model.checkpoint import FORMAT_VERSION, file_sha256, with_card

from conftest import TINY, make_checkpoint, peak_memory


def test_round_trip_reproduces_outputs_bit_for_bit(tmp_path):
    config = ModelConfig(features=4, depth=2, dropout=0.1, batch_norm=True)
    model = UNet(config)
    model.train()
    with torch.no_grad():  # batch-norm statistics away from their defaults (0 and 1)
        for _ in range(3):
            model(torch.randn(4, 1, 32, 32) * 3 + 2)
    running = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert running and all(r.abs().sum() > 0 for r in running)
    ckpt = Checkpoint.from_model(model.eval(), new_card(config, name="bn"))
    path = save_checkpoint(ckpt, tmp_path / "model")
    assert path.suffix == ".safetensors"
    loaded = load_checkpoint(path)
    assert loaded.model_config == ckpt.model_config
    assert loaded.card == ckpt.card
    assert loaded.sha256 == file_sha256(path)
    x = torch.randn(2, 1, 37, 29)
    with torch.inference_mode():
        assert torch.equal(ckpt.build_model()(x), loaded.build_model()(x))


def test_half_precision_file_is_half_the_size_and_loads_as_float32(tmp_path):
    ckpt = make_checkpoint(ModelConfig(features=8, depth=2), seed=1)
    full = save_checkpoint(ckpt, tmp_path / "full.safetensors")
    half = save_checkpoint(ckpt, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    weights = [v for v in loaded.state_dict.values() if v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 for v in weights)
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        reference = ckpt.build_model().eval()(x)
        rounded = loaded.build_model().eval()(x)
    assert not torch.equal(reference, rounded)
    torch.testing.assert_close(rounded, reference, rtol=0.02, atol=0.02)


def test_card_records_what_users_need(tiny_checkpoint_file):
    card = load_checkpoint(tiny_checkpoint_file).card
    assert card.input_axes == "CYX"
    assert "interior" in card.outputs and "watershed" in card.outputs
    assert card.normalization["kind"] == "percentile"
    assert card.created and card.package_version


def test_save_is_atomic_and_never_overwrites_silently(tmp_path, tiny_checkpoint):
    path = save_checkpoint(tiny_checkpoint, tmp_path / "a.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        save_checkpoint(tiny_checkpoint, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_parent_is_never_overwritten_even_when_asked(tmp_path, tiny_checkpoint):
    parent_path = save_checkpoint(tiny_checkpoint, tmp_path / "parent.safetensors")
    parent = load_checkpoint(parent_path)
    child = with_card(parent, name="child", parent=parent.as_parent())
    before = parent_path.read_bytes()
    with pytest.raises(FileExistsError, match="parent"):
        save_checkpoint(child, parent_path, overwrite=True)
    assert parent_path.read_bytes() == before
    child_path = save_checkpoint(child, tmp_path / "child.safetensors")
    assert load_checkpoint(child_path).card.parent["sha256"] == parent.sha256


def test_training_a_built_model_leaves_the_checkpoint_untouched(tiny_checkpoint):
    before = {k: v.clone() for k, v in tiny_checkpoint.state_dict.items()}
    model = tiny_checkpoint.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in tiny_checkpoint.state_dict.items())


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_is_refused_and_nothing_runs(tmp_path, tiny_checkpoint):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(tiny_checkpoint.state_dict), "x": _Payload(marker)}, evil)
    for loader in (load_checkpoint, import_state_dict):
        with pytest.raises(
            CheckpointError, match="refused.*Nothing from it was executed"
        ) as error:
            loader(evil)
        assert "\n" not in str(error.value)  # one line, as every error the CLI prints
    # Disguised under the safetensors suffix it is recognized and refused just the same.
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(evil.read_bytes())
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(disguised)
    assert not marker.exists()


def test_plain_state_dict_is_imported_and_architecture_inferred(tmp_path):
    config = ModelConfig(in_channels=2, out_channels=1, features=4, depth=3, batch_norm=False)
    ckpt = make_checkpoint(config)
    path = tmp_path / "weights.pth"
    torch.save({"model_state_dict": dict(ckpt.state_dict)}, path)
    imported = load_checkpoint(path)
    assert imported.model_config == config
    assert imported.card.name == "weights"
    x = torch.randn(1, 2, 16, 16)
    with torch.inference_mode():
        assert torch.equal(ckpt.build_model()(x), imported.build_model()(x))


def _corrupt_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _drop_tensor(path, key):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != key}
    save_file(tensors, str(path), metadata=meta)


def _poison_weights(path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["final_conv.bias"][0] = float("nan")
    save_file(tensors, str(path), metadata=meta)


def _edit_tensors(edit):
    def damage(path):
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors)
        save_file(tensors, str(path), metadata=meta)

    return damage


def _int_weights(tensors):
    tensors["final_conv.weight"] = tensors["final_conv.weight"].to(torch.int32)


def _negative_variance(tensors):
    key = next(k for k in tensors if k.endswith("running_var"))
    tensors[key][0] = -1.0


def _edit_card(**fields):
    def edit(header):
        card = json.loads(header["__metadata__"]["card"])
        card.update(fields)
        header["__metadata__"]["card"] = json.dumps(card)

    return edit


def _config_with(**fields):
    """Damage: the header's model config with ``fields`` changed."""
    return lambda p: _corrupt_header(
        p, _set_meta("model_config", json.dumps({**TINY.to_dict(), **fields}))
    )


def _set_meta(key, value):
    def edit(header):
        header["__metadata__"][key] = value

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "no safetensors header"),
        (lambda p: p.write_bytes(b"abc"), "too short"),
        (
            lambda p: _corrupt_header(p, _set_meta("format_version", str(FORMAT_VERSION + 1))),
            "Upgrade",
        ),
        (
            lambda p: _corrupt_header(p, _set_meta("format", "other-tool")),
            "not a napari-unet-tuner",
        ),
        (
            lambda p: _corrupt_header(p, _set_meta("model_config", "{not json")),
            "invalid model config",
        ),
        (
            _config_with(features=8),
            "shapes that do not match",
        ),
        (
            _config_with(depth=3),
            "missing weights",
        ),
        (lambda p: _drop_tensor(p, "final_conv.weight"), "missing weights final_conv.weight"),
        (lambda p: _corrupt_header(p, _set_meta("format_version", "-1")), "format_version -1"),
        (
            _config_with(depth=50),
            "depth 50",
        ),
        (
            lambda p: _corrupt_header(p, _set_meta("card", "[1, 2]")),
            "invalid model config or card",
        ),
        (
            lambda p: _corrupt_header(p, lambda h: h.update(__metadata__=["format"])),
            "corrupt safetensors header",
        ),
        (
            lambda p: _corrupt_header(
                p, lambda h: h["final_conv.weight"].update(data_offsets="0-10")
            ),
            "corrupt safetensors header",
        ),
        (
            lambda p: _corrupt_header(p, lambda h: h["final_conv.weight"].update(shape=None)),
            "corrupt safetensors header",
        ),
        (_poison_weights, "NaN or infinite weights"),
        # Damage that used to load and crash later (issue 36).
        (
            lambda p: _corrupt_header(p, _set_meta("card", "[" * 100_000 + "]" * 100_000)),
            "invalid model config or card",
        ),
        (lambda p: _corrupt_header(p, _edit_card(training=[1, "x"])), "training must be"),
        (lambda p: _corrupt_header(p, _edit_card(object_diameter="big")), "object_diameter"),
        (lambda p: _corrupt_header(p, _edit_card(object_diameter=0)), "object_diameter"),
        (lambda p: _corrupt_header(p, _edit_card(object_diameter=-5)), "object_diameter"),
        (lambda p: _corrupt_header(p, _edit_card(instances={"threshold": 7})), "threshold"),
        (
            _config_with(out_channels=2),
            "out_channels 2",
        ),
        (
            _config_with(out_channels=5),
            "out_channels 5",
        ),
        (_edit_tensors(_int_weights), "weights of the wrong type.*final_conv.weight"),
        (_edit_tensors(_negative_variance), "negative batch-norm variances"),
    ],
)
def test_bad_checkpoints_give_specific_errors(tiny_checkpoint_file, damage, message):
    damage(tiny_checkpoint_file)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tiny_checkpoint_file)


def test_double_precision_weights_load_as_float32_and_segment(tiny_checkpoint_file):
    expected = load_checkpoint(tiny_checkpoint_file)

    def to_double(tensors):
        for key, value in tensors.items():
            if value.is_floating_point():
                tensors[key] = value.double()

    _edit_tensors(to_double)(tiny_checkpoint_file)
    loaded = load_checkpoint(tiny_checkpoint_file)
    assert {v.dtype for k, v in loaded.state_dict.items() if "num_batches" not in k} == {
        torch.float32
    }
    x = torch.randn(1, 1, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(loaded.build_model()(x), expected.build_model()(x), atol=1e-6)


def test_header_length_that_looks_like_pickle_still_loads(tiny_checkpoint_file):
    # A header whose length has low byte 0x80 (pickle's first byte) is safetensors all the same.
    expected = load_checkpoint(tiny_checkpoint_file).card

    def pad_to_0x80(header):
        text = json.dumps(header)
        header["__metadata__"]["padding"] = " " * ((0x80 - len(text) - 16) % 256)

    _corrupt_header(tiny_checkpoint_file, pad_to_0x80)
    assert tiny_checkpoint_file.read_bytes()[0] == 0x80
    assert load_checkpoint(tiny_checkpoint_file).card.name == expected.name


def test_missing_file_and_non_torch_pt(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    fake = tmp_path / "fake.pt"
    fake.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_checkpoint(fake)


def test_content_decides_how_a_file_is_read_not_its_suffix(tiny_checkpoint_file, tmp_path):
    original = load_checkpoint(tiny_checkpoint_file)
    # A checkpoint named .pt is still read as a checkpoint, card and all...
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(tiny_checkpoint_file.read_bytes())
    as_pt = load_checkpoint(renamed)
    assert as_pt.card == original.card and as_pt.model_config == original.model_config
    # ...and a PyTorch state dict named .safetensors is imported as one.
    disguised = tmp_path / "weights.safetensors"
    torch.save(dict(original.state_dict), disguised)
    imported = load_checkpoint(disguised)
    assert imported.card.description.startswith("Imported from the PyTorch state dict")
    for loaded in (as_pt, imported):
        assert all(torch.equal(loaded.state_dict[k], v) for k, v in original.state_dict.items())


def test_a_zip_that_would_inflate_far_beyond_its_size_is_refused_unread(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))
    assert bomb.stat().st_size < 1 << 20
    with peak_memory() as peak, pytest.raises(CheckpointError, match="would inflate"):
        load_checkpoint(bomb)
    assert peak[0] < 8 << 20


def test_a_checkpoint_gets_the_permissions_of_any_other_output(tmp_path):
    import os

    from napari_unet_tuner.io import write_tiff_atomic

    old = os.umask(0o022)
    try:
        model = save_checkpoint(make_checkpoint(), tmp_path / "m.safetensors")
        labels = write_tiff_atomic(tmp_path / "l.tif", torch.zeros(4, 4).int().numpy())
    finally:
        os.umask(old)
    assert model.stat().st_mode & 0o777 == labels.stat().st_mode & 0o777 == 0o644
