"""Built-in models: output shapes, weight initialisation statistics, and the ability to learn."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from taktstock.errors import ConfigError
from taktstock.models.init import initialize
from taktstock.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Small variants keep the test fast; the architecture code paths are the same as the defaults.
SMALL = {"mlp": {"hidden": [16, 8]}, "cnn": {"channels": [4, 8]}, "resnet": {"blocks": [1, 1], "width": 4}}


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (8, 8), (3, 32, 32)])
def test_model_maps_a_batch_of_images_to_one_output_row_per_sample(name: str, input_shape: tuple[int, ...]) -> None:
    model = build_model(name, SMALL[name], input_shape, num_outputs=7)
    x = torch.randn(5, *input_shape)
    out = model(x)
    assert out.shape == (5, 7)
    out.sum().backward()  # every parameter takes part in the forward pass
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_accepts_flat_feature_vectors() -> None:
    model = build_model("mlp", SMALL["mlp"], (13,), num_outputs=1)
    assert model(torch.randn(4, 13)).shape == (4, 1)


def test_conv_model_on_flat_features_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model: cannot build cnn"):
        build_model("cnn", SMALL["cnn"], (13,), num_outputs=3)


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _wide_mlp(init: str, fan_in: int = 256, width: int = 512) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [width]}, (fan_in,), num_outputs=10)
    initialize(model, init)
    return model


def test_kaiming_normal_has_std_sqrt_2_over_fan_in_and_zero_biases() -> None:
    model = _wide_mlp("kaiming_normal")
    w = _layers(model)[0].weight.detach().double()
    n, fan_in = w.numel(), w.shape[1]
    expected = math.sqrt(2.0 / fan_in)
    # Standard errors of a normal sample: mean sigma/sqrt(n), std sigma/sqrt(2n); 5 of them is a 1-in-10^6 miss.
    assert abs(float(w.mean())) < 5 * expected / math.sqrt(n)
    assert abs(float(w.std()) - expected) < 5 * expected / math.sqrt(2 * n)
    for layer in _layers(model):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_kaiming_normal_on_conv_uses_channels_times_kernel_as_fan_in() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [32, 64], "batch_norm": False}, (3, 8, 8), num_outputs=10)
    initialize(model, "kaiming_normal")
    conv = _layers(model)[1]  # 32 -> 32 channels, 3x3: fan_in 288
    w = conv.weight.detach().double()
    expected = math.sqrt(2.0 / (32 * 9))
    assert abs(float(w.std()) - expected) < 5 * expected / math.sqrt(2 * w.numel())
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_xavier_uniform_respects_its_bound_and_variance() -> None:
    model = _wide_mlp("xavier_uniform")
    w = _layers(model)[0].weight.detach().double()
    n = w.numel()
    fan_out, fan_in = w.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > bound * (1 - 20 / n)  # the sample reaches the bound (miss prob. e^-20)
    # Var(U[-a, a]) = a^2/3; the standard error of the mean of w^2 is sqrt(4/45) a^2 / sqrt(n).
    assert abs(float((w**2).mean()) - bound**2 / 3) < 5 * math.sqrt(4 / 45) * bound**2 / math.sqrt(n)
    for layer in _layers(model):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize(("fan_in", "width"), [(256, 512), (512, 256)])
def test_orthogonal_init_gives_orthonormal_rows_or_columns(fan_in: int, width: int) -> None:
    model = _wide_mlp("orthogonal", fan_in=fan_in, width=width)
    w = _layers(model)[0].weight.detach().double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


def test_default_init_keeps_pytorch_initialisation() -> None:
    torch.manual_seed(3)
    reference = build_model("mlp", {"hidden": [8]}, (4,), 2)
    torch.manual_seed(3)
    model = build_model("mlp", {"hidden": [8]}, (4,), 2)
    initialize(model, "default")
    for a, b in zip(reference.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(float(layer.bias.detach().abs().sum()) > 0 for layer in _layers(model))


def test_model_overfits_one_small_batch() -> None:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images[:32, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:32])
    model = build_model("mlp", {"hidden": [64]}, (1, 8, 8), num_outputs=10)
    initialize(model, "kaiming_normal")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert float(nn.functional.cross_entropy(out, y)) < 0.01
    assert torch.equal(out.argmax(1), y)
