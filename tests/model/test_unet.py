import pytest
import torch

from napari_unet_tuner import ConfigError, ModelConfig, UNet


@pytest.mark.parametrize(
    ("spatial_dims", "depth", "spatial"),
    [
        (2, 1, (1, 1)),
        (2, 2, (17, 33)),
        (2, 3, (64, 64)),
        (2, 4, (31, 100)),
        (3, 1, (3, 5, 7)),
        (3, 2, (9, 16, 13)),
    ],
)
@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shape_matches_any_input_size(spatial_dims, depth, spatial, out_channels):
    config = ModelConfig(
        spatial_dims=spatial_dims,
        in_channels=2,
        out_channels=out_channels,
        features=2,
        depth=depth,
    )
    model = UNet(config).eval()
    x = torch.randn(2, 2, *spatial)
    assert model(x).shape == (2, out_channels, *spatial)
    proba = model.predict_proba(x)
    if out_channels == 1:
        assert ((proba >= 0) & (proba <= 1)).all()
    else:
        torch.testing.assert_close(proba.sum(1), torch.ones(2, *spatial))


def test_architecture_follows_ronneberger():
    model = UNet(ModelConfig(features=8, depth=4, batch_norm=False))
    widths = [block[0].out_channels for block in model.down]
    assert widths == [8, 16, 32, 64]
    assert model.bridge[0].out_channels == 128
    assert [block.upsample.out_channels for block in model.up] == [64, 32, 16, 8]
    assert all(block.upsample.kernel_size == (2, 2) for block in model.up)
    assert model.final_conv.kernel_size == (1, 1)
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs) == 2 * 4 + 2 + 2 * 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_batch_norm_and_dropout_options():
    model = UNet(ModelConfig(features=4, depth=2, batch_norm=True, dropout=0.2))
    kinds = [type(m).__name__ for m in model.down[0]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout2d"] * 2


def test_wrong_channel_count_says_what_is_expected():
    model = UNet(ModelConfig(in_channels=1, features=2, depth=1))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 1, \*, \*\)"):
        model(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize(
    "bad",
    [{"spatial_dims": 4}, {"depth": 0}, {"features": -1}, {"dropout": 1.0}, {"in_channels": 1.5}],
)
def test_invalid_config_is_rejected(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_config_dict_round_trip_and_unknown_keys():
    config = ModelConfig(spatial_dims=3, features=8, dropout=0.1)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="no field"):
        ModelConfig.from_dict({**config.to_dict(), "featurs": 3})


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_folded_batch_norm_gives_the_same_outputs_and_leaves_the_model_alone(spatial_dims):
    from napari_unet_tuner.model.unet import fold_batch_norm

    torch.manual_seed(0)
    model = UNet(ModelConfig(spatial_dims=spatial_dims, features=4, depth=2))
    # Running statistics other than the initial 0/1, as after training.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, *(16,) * spatial_dims) * 3 + 1)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(1, 1, *(24,) * spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
