"""The GMM classifier LightningModule: training, logged metrics against independent
formulas, TensorBoard outputs, image grids, checkpoints and configs."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from support.compose import train_config
from support.trainer import quiet_trainer

from gmlab.data import DigitsDataModule
from gmlab.errors import ConfigError, ShapeError
from gmlab.models.gmm_classifier import (
    GMMClassifier,
    IdentityTrunk,
    extreme_indices,
    likelihood_grid,
)
from gmlab.nn.gmm_layer import GaussianMixtureClassifier
from gmlab.train import train
from gmlab.utils.checkpoint import load_model

CONF = Path(__file__).resolve().parents[2] / "conf"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


CNN = {"_target_": "gmlab.nn.MnistCNN", "channels": [8, 16]}
LINEAR = {"_target_": "gmlab.nn.gmm_layer.LinearClassifier"}
IDENTITY = {"_target_": "gmlab.models.gmm_classifier.IdentityTrunk"}


def gmm(**options) -> dict:
    """A GMM head part dict (tril unless `options` say otherwise)."""
    return {"_target_": "gmlab.nn.GaussianMixtureClassifier", "covariance": "tril", **options}


def small_model(**kw) -> GMMClassifier:
    args = dict(data_shape=(1, 8, 8), num_classes=10, features=32, trunk=CNN)
    args.update(optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3})
    return GMMClassifier(**{**args, **kw})


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def reference_ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """L1 expected calibration error over equal-width bins (lo, hi] of the top confidence."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    total = 0.0
    for b in range(bins):
        in_bin = (conf > b / bins) & (conf <= (b + 1) / bins)
        if in_bin.any():
            gap = correct[in_bin].mean() - conf[in_bin].double().mean()
            total += in_bin.double().mean().item() * abs(gap.item())
    return total


@pytest.mark.parametrize(
    "head,cov", [("gmm", "tril"), ("gmm", "diag"), ("gmm", "full"), ("linear", None)]
)
def test_short_training_improves_accuracy(head, cov):
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    x_val, y_val = dm.tensors("val")
    model = small_model(head=gmm(covariance=cov, components_per_class=2) if cov else LINEAR)
    before = accuracy(model, x_val, y_val)
    quiet_trainer(max_epochs=4).fit(model, datamodule=dm)
    after = accuracy(model, x_val, y_val)
    assert before < 0.3 and after > 0.75, (before, after)
    assert isinstance(model.head, GaussianMixtureClassifier if head == "gmm" else torch.nn.Linear)


def test_head_refit_leaves_the_class_gaussians_of_the_training_features():
    """With head_refit, the trained head holds each class's mean and ML covariance
    (+ floor^2 I) of the final trunk's training features, and still classifies."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = small_model(head_refit=True, feature_norm="layer")
    quiet_trainer(max_epochs=3).fit(model, datamodule=dm)
    x, y = dm.tensors("train")
    model.eval()
    with torch.no_grad():
        f = model.features(x).double()
    cov = model.head.covariance_matrix().double()
    eye = torch.eye(f.shape[1], dtype=torch.float64)
    for c in range(10):
        fc = f[y == c]
        assert torch.allclose(model.head.means[c].double(), fc.mean(0), atol=1e-4)
        expected = torch.cov(fc.T, correction=0) + model.head.floor**2 * eye
        assert torch.allclose(cov[c], expected, atol=2e-3 * expected.abs().max())
    x_val, y_val = dm.tensors("val")
    assert accuracy(model, x_val, y_val) > 0.75


def class_gaussian_joint(f: torch.Tensor, y: torch.Tensor, floor: float) -> torch.Tensor:
    """[N, S] log N(f; class mean, class ML covariance + floor^2 I) + log 1/S (float64)."""
    eye = torch.eye(f.shape[1], dtype=torch.float64)
    cols = []
    for c in range(int(y.max()) + 1):
        fc = f[y == c]
        cov = torch.cov(fc.T, correction=0) + floor**2 * eye
        cols.append(torch.distributions.MultivariateNormal(fc.mean(0), cov).log_prob(f))
    return torch.stack(cols, -1) - torch.log(torch.tensor(len(cols), dtype=torch.float64))


def test_eval_head_refit_scores_with_the_class_gaussians_and_trains_the_gradient_head(tmp_path):
    """head_refit=eval: in eval mode the class scores are the class Gaussians of the
    training features; in train mode they are the gradient head's, which the optimizer
    updates and the eval head is not part of; a checkpoint keeps both."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = small_model(head_refit="eval", feature_norm="layer")
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(model, datamodule=dm)
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.eval_head.parameters()}
    assert {id(p) for p in model.head.parameters()} <= optimized
    x, y = dm.tensors("train")
    model.eval()
    with torch.no_grad():
        f = model.features(x)
        expected = class_gaussian_joint(f.double(), y, model.head.floor)
        eval_joint = model.joint(x).double()
        model.train()
        train_joint = model.joint(x)
        assert torch.allclose(train_joint, model.head.joint_log_prob(f))
    assert torch.allclose(eval_joint, expected, atol=1e-3 * expected.abs().max())
    assert not torch.allclose(train_joint.double(), expected, atol=1.0)
    x_val, y_val = dm.tensors("val")
    assert accuracy(model.eval(), x_val, y_val) > 0.75
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(loaded.joint(x_val), model.joint(x_val))


def test_eval_head_is_refitted_before_a_test_that_no_validation_preceded():
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = small_model(head_refit="eval")
    quiet_trainer().test(model, datamodule=dm)
    assert bool(model.eval_head_fitted)
    x, y = dm.tensors("train")
    with torch.no_grad():
        f = model.eval().features(x).double()
    assert torch.allclose(model.eval_head.means[3].double(), f[y == 3].mean(0), atol=1e-4)


def test_head_refit_without_a_gmlab_datamodule_is_a_clear_error():
    dm = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    dm.setup()
    model = small_model(head_refit=True)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    with pytest.raises(ConfigError, match="head_refit=head needs a gmlab DataModule"):
        trainer.fit(model, dm.train_dataloader(), dm.val_dataloader())


def test_head_refit_needs_a_closed_form_head():
    with pytest.raises(ConfigError, match="head_refit=head needs model/head=gmm"):
        small_model(head=LINEAR, head_refit=True)
    with pytest.raises(ConfigError, match="model.head_refit=head: the closed-form refit"):
        small_model(head=gmm(covariance="lowrank"), head_refit=True)
    with pytest.raises(ConfigError, match="components_per_class=2"):
        small_model(head=gmm(components_per_class=2), head_refit=True)
    with pytest.raises(ConfigError, match="model.head_refit=eval needs model/head=gmm"):
        small_model(head=LINEAR, head_refit="eval")
    with pytest.raises(ConfigError, match="one of none, head, eval"):
        small_model(head_refit="test")


def test_gmlab_train_logs_metrics_histogram_and_grids(tmp_path):
    """Through Hydra: acc/nll/ece match formulas computed independently from the best
    checkpoint's predictions; TensorBoard holds the OOD histogram and the digit grid."""
    cfg = train_config(
        tmp_path,
        [
            "model=gmm_classifier", "data=digits", "model.features=32", "model/optimizer=adam",
            "model.optimizer.lr=0.003", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
            "logger=tensorboard",
        ],
    )  # fmt: skip
    metrics = train(cfg)
    for key in ("train/loss", "val/acc", "val/nll", "val/ece", "test/acc", "test/nll"):
        assert key in metrics
    best = sorted((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    model = load_model(best[0]).eval()
    assert isinstance(model, GMMClassifier)
    x, y = DigitsDataModule(test_size=297).tensors("test")
    with torch.no_grad():
        log_post = model(x)
    assert metrics["test/acc"] == pytest.approx((log_post.argmax(-1) == y).float().mean().item())
    assert metrics["test/nll"] == pytest.approx(F.nll_loss(log_post, y).item(), rel=1e-5)
    assert metrics["test/ece"] == pytest.approx(reference_ece(log_post.exp(), y), abs=1e-5)
    assert metrics["test/acc"] > 0.5

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    assert "test/ood_score" in events.Tags()["histograms"]
    hist = events.Histograms("test/ood_score")[-1].histogram_value
    assert hist.num == 297
    assert "test/likely_digits" in events.Tags()["images"]
    assert "images/likely_digits" in events.Tags()["images"]  # the ImageGrids callback
    assert (tmp_path / "images" / "test" / "likely_digits.png").is_file()


def test_best_checkpoint_follows_validation_accuracy():
    assert GMMClassifier.monitor == "val/acc" and GMMClassifier.monitor_mode == "max"


def test_extreme_indices_and_grid_layout():
    classes = torch.tensor([0, 0, 0, 1, 0, 0])
    scores = torch.tensor([1.0, 5.0, 3.0, 0.0, 4.0, 2.0])
    parts = extreme_indices(classes, scores, num_classes=3, k=2)
    assert [p.tolist() for p in parts] == [[1, 4], [5, 0], [3], [], [], []]
    images = scores.view(-1, 1, 1, 1).expand(-1, 1, 4, 4) / 5  # brightness = score
    grid = likelihood_grid(images, classes, scores, num_classes=3, k=2)
    assert grid.shape == (3, 3 * 5 + 1, 4 * 5 + 1)  # rows = classes, 2k columns, padding 1
    row0 = [grid[0, 1 + 1, 1 + 5 * j + 1].item() for j in range(4)]
    assert row0 == pytest.approx([1.0, 0.8, 0.4, 0.2])  # most likely left, least likely last
    row1 = [grid[0, 6 + 1, 1 + 5 * j + 1].item() for j in range(4)]
    assert row1 == pytest.approx([0.0, 0.5, 0.5, 0.5])  # one member, grey blanks


def test_figures_and_ood_score():
    torch.manual_seed(0)
    model = small_model(head=gmm()).eval()
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    fig = model.figures(x)["likely_digits"]
    assert fig.shape == (3, 10 * 9 + 1, 8 * 9 + 1) and fig.min() >= 0 and fig.max() <= 1
    with torch.no_grad():
        f = model.trunk(model.inputs(x))
        torch.testing.assert_close(model.ood_score(x), model.head.log_prob(f))
        torch.testing.assert_close(model(x), model.head(f))
        assert set(model.histograms(x)) == {"ood_score"}
        torch.testing.assert_close(model.histograms(x)["ood_score"], model.head.log_prob(f))


def test_points_through_the_identity_trunk_and_bad_shapes_are_clear_errors():
    model = GMMClassifier([2], 3, trunk=IDENTITY, head=gmm(covariance="full"))
    assert isinstance(model.trunk, IdentityTrunk) and model.head.in_features == 2
    x = torch.randn(5, 2)
    torch.testing.assert_close(model(x), model.head(x))  # the points are the features
    with pytest.raises(ShapeError, match=r"expects batches of shape \[B, 2\], got \[5, 3\]"):
        model(torch.randn(5, 3))
    with pytest.raises(ConfigError, match=r"cannot build model.head \(gmlab.nn.Svm\)"):
        GMMClassifier([2], 3, trunk=IDENTITY, head={"_target_": "gmlab.nn.Svm"})
    with pytest.raises(ConfigError, match=r"model.trunk \(gmlab.nn.MnistCNN\).*\[C, H, W\]"):
        GMMClassifier([2], 3)  # the preset's CNN trunk takes images
    with pytest.raises(ConfigError, match="model.trunk.out_features is set by the model"):
        GMMClassifier([2], 3, trunk={"_target_": "gmlab.nn.mlp.MLPEncoder", "out_features": 4})


def test_an_mlp_trunk_gives_the_head_features_outputs_and_the_log_scale_one_more():
    mlp = {"_target_": "gmlab.nn.mlp.MLPEncoder", "hidden": [6]}
    model = GMMClassifier([3], 2, trunk=mlp, features=5)
    x = torch.randn(4, 3)
    assert model.trunk(x).shape == (4, 5) and model.head.in_features == 5
    scaled = GMMClassifier([3], 2, trunk=mlp, features=5, feature_norm="layer",
                           feature_log_scale=True)  # fmt: skip
    assert scaled.trunk(x).shape == (4, 4) and scaled.head.in_features == 5
    f = scaled.trunk(x)
    torch.testing.assert_close(scaled.features(x)[:, -1], f.std(-1, unbiased=False).log())


@pytest.mark.parametrize(
    "experiment,cov,g", [
        ("gmm_classifier_mnist", "tril", 1), ("gmm_classifier_mnist_diag", "diag", 1),
        ("gmm_classifier_mnist_full", "full", 1), ("gmm_classifier_mnist_g3", "tril", 3),
        ("gmm_classifier_mnist_ood", "tril", 1),
    ],
)  # fmt: skip
def test_experiment_configs(experiment, cov, g):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    assert cfg.model.head.covariance == cov and cfg.model.head.components_per_class == g
    assert cfg.model.trunk._target_ == "gmlab.nn.MnistCNN" and cfg.model.trunk.channels == [16, 32]
    assert cfg.model.optimizer._target_ == "torch.optim.Adadelta" and cfg.model.optimizer.lr == 1.0
    assert cfg.model.lr_scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert cfg.model.lr_scheduler.gamma == 0.7 and cfg.model.lr_scheduler.step_size == 1
    assert cfg.model.lr_scheduler.interval == "epoch" and cfg.data.batch_size == 64
    assert cfg.trainer.max_epochs == 14 and cfg.data._target_.endswith("MNISTDataModule")
    assert cfg.model.data_shape == [1, 28, 28]
    if experiment.endswith("_ood"):
        assert cfg.model.head_refit == "eval" and cfg.model.features == 16
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
        assert model.head_refit == "eval" and model.eval_head.dim == 16
        assert model.head.projection is None and model.trunk.out_features == 15  # + log s
