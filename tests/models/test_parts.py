import pytest
import torch

from gmlab.errors import ConfigError
from gmlab.models.parts import build_part


def test_build_part_passes_config_and_supplied_arguments():
    layer = build_part(
        {"_target_": "torch.nn.Linear", "bias": False}, "net", in_features=3, out_features=2
    )
    assert isinstance(layer, torch.nn.Linear)
    assert layer.weight.shape == (2, 3) and layer.bias is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "model.net is not set"),
        ({"bias": False}, "must be a config with a `_target_`"),
        ({"_target_": "torch.nn.Linear", "in_features": 3}, "set by the model itself"),
        ({"_target_": "torch.nn.NoSuchLayer"}, r"cannot build model.net \(torch.nn.NoSuchLayer\)"),
    ],
)
def test_build_part_errors_name_the_option(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_part(spec, "net", in_features=3, out_features=2)
