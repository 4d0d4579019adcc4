"""`gmlab.MFA`: a scikit-learn-style estimator for MFA / MPPCA.

    from gmlab import MFA
    mfa = MFA(n_components=50, n_factors=6, noise="diagonal").fit(X)
    mfa.score_samples(X)     # [N] log-densities (nats)
    mfa.predict(X)           # [N] MAP components
    X_new, comp = mfa.sample(16)
    mfa.reconstruct(X, mask) # in-painting, mask True = observed
    mfa.bpd(X_uint8)         # bits/dim on gmlab's convention

`fit` runs the same LightningModules as `gmlab-train` (`gmlab.models.mfa.MFAModel`, then
`gmlab.models.mfa_finetune.MFAFinetune` when `finetune_epochs` > 0) on Lightning Trainers
without loggers or checkpoints. `MFA` follows scikit-learn's estimator convention
(`get_params` / `set_params`, fitted attributes end in "_"), so `sklearn.base.clone`,
`GridSearchCV` and `Pipeline` work with it. What `fit` gets fixes the kind of data
(`input_kind_`, see `gmlab.estimators.inputs`):

* float arrays/tensors [N, d] ("continuous"): modelled as they are (any units); later
  integer inputs are cast to float, so the same values score the same in any dtype;
* integer arrays/tensors ("pixels": 8-bit values 0..255, other values are refused):
  dequantized, y = (x + u) / 256, so that `score_samples` is the log-density of y on the
  unit cube, `bpd` gmlab's bits/dim (`gmlab.metrics.bits_per_dim`), and `sample` /
  `reconstruct` return pixel values in [0, 255]; later inputs must be pixels too
  (integers, or floats with whole values, in 0..255);
* a gmlab DataModule: its training split (images [N, C, H, W] are flattened; its dtype
  fixes the kind).

Outputs are numpy arrays for numpy inputs and torch tensors otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import lightning as L
import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted

from gmlab.data.base import InMemoryDataModule
from gmlab.distributions.mfa import NOISE_TYPES
from gmlab.errors import ConfigError, ShapeError
from gmlab.estimators.inputs import PIXELS, as_batch, as_kind, kind_of
from gmlab.metrics import bits_per_dim
from gmlab.models.mfa import MFAModel
from gmlab.models.mfa_finetune import MFAFinetune

__all__ = ["MFA"]


class MFA(DensityMixin, BaseEstimator):
    """Mixture of factor analyzers (or of PPCAs) fitted by EM.

    Args:
        n_components: K, the number of components.
        n_factors: l, latent factors per component (0: a diagonal-covariance GMM).
        noise: "diagonal" (MFA) or "isotropic" (MPPCA).
        max_iter: maximum EM passes over the data.
        tol: stop when the mean training log-likelihood (nats/point) improves by less
            than this between passes (0: always run `max_iter` passes).
        init: "kmeans" or "rnd_samples".
        noise_floor: lower bound of the noise variances (data units).
        noise_reg: added to the noise variances after each M-step (like scikit-learn's
            `reg_covar`).
        reseed_below: responsibility mass (points) under which a component is re-seeded.
        feature_sampling: None or the fraction of coordinates used for responsibilities.
        finetune_epochs: Adam epochs on the negative log-likelihood after EM.
        finetune_lr: their learning rate.
        batch_size: points per E-step batch (memory vs. matmul efficiency).
        accelerator, devices: passed to the Lightning Trainer ("auto" uses a GPU if any).
        random_state: seed of the initialisation, shuffling and dequantization noise.
        verbose: show Lightning's progress bar.

    Fitted attributes: `means_` [K, d], `factors_` [K, d, l], `noise_variance_` [K, d],
    `weights_` [K], `n_iter_`, `log_likelihood_` (mean training log-likelihood after
    each EM pass's E-step), `n_features_in_`, `input_kind_` ("pixels" or "continuous"),
    `model_` (the LightningModule).

    Where pixels are assumed, integer values outside 0..255 are a `ShapeError` naming the
    argument: in `fit` on an integer array, and, for a model fitted on pixels, in
    `score_samples`, `score`, `predict`, `predict_proba`, `reconstruct` and `bpd`. Floats
    beyond float32's range are a `NonFiniteError` everywhere; `n_components` larger than
    the number of samples is a `ConfigError` in `fit`.

    Two blobs N(-5, I) and N(5, I) in 3-D: the means come back, and the mean log-density
    is near the mixture's, -(3/2)(1 + ln 2 pi) - ln 2 = -4.95 nats:

    >>> import numpy as np
    >>> from gmlab import MFA
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-5, 1, (100, 3)), rng.normal(5, 1, (100, 3))])
    >>> mfa = MFA(n_components=2, n_factors=1, max_iter=10).fit(X)
    >>> np.sort(mfa.means_[:, 0]).round(), round(mfa.score(X), 1)
    (array([-5.,  5.], dtype=float32), -4.9)
    >>> samples, components = mfa.sample(5)
    >>> samples.shape, components.shape, mfa.score_samples(X).shape
    ((5, 3), (5,), (200,))
    """

    def __init__(
        self,
        n_components: int = 10,
        n_factors: int = 4,
        noise: str = "diagonal",
        max_iter: int = 20,
        tol: float = 1e-3,
        init: str = "kmeans",
        noise_floor: float = 1e-6,
        noise_reg: float = 0.0,
        reseed_below: float = 1.0,
        feature_sampling: float | None = None,
        finetune_epochs: int = 0,
        finetune_lr: float = 1e-4,
        batch_size: int = 4096,
        accelerator: str = "cpu",
        devices: int | str = 1,
        random_state: int = 0,
        verbose: bool = False,
    ) -> None:
        self.n_components = n_components
        self.n_factors = n_factors
        self.noise = noise
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.noise_floor = noise_floor
        self.noise_reg = noise_reg
        self.reseed_below = reseed_below
        self.feature_sampling = feature_sampling
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.batch_size = batch_size
        self.accelerator = accelerator
        self.devices = devices
        self.random_state = random_state
        self.verbose = verbose

    # -------------------------------------------------------------- checks
    def _check_params(self) -> None:
        if self.noise not in NOISE_TYPES:
            raise ConfigError(f"noise must be one of {NOISE_TYPES}, got {self.noise!r}")
        for name in ("n_components", "max_iter", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_factors", "finetune_epochs", "random_state"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.init not in ("kmeans", "rnd_samples"):
            raise ConfigError(f"init must be 'kmeans' or 'rnd_samples', got {self.init!r}")
        if self.noise_floor <= 0:
            raise ConfigError(f"noise_floor must be > 0, got {self.noise_floor}")
        if self.noise_reg < 0:
            raise ConfigError(f"noise_reg must be >= 0, got {self.noise_reg}")
        if self.tol < 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol}")

    def _input(self, X, name: str = "X") -> tuple[torch.Tensor, bool]:
        """A later input, validated and in the form of the fit's kind of data:
        ([N, d] tensor, whether X was not a tensor)."""
        check_is_fitted(self, "model_")
        x, is_numpy = as_batch(X, name)
        if x.shape[1] != self.n_features_in_:
            raise ShapeError(
                f"{name} has {x.shape[1]} features, but MFA is expecting "
                f"{self.n_features_in_} features as input (the number it was fitted with)"
            )
        return as_kind(x, self.input_kind_, name), is_numpy

    def _out(self, t: torch.Tensor, is_numpy: bool):
        t = t.detach()
        return t.cpu().numpy() if is_numpy else t

    # ----------------------------------------------------------------- fit
    def fit(self, X, y=None) -> MFA:
        """Fit by EM (then `finetune_epochs` of Adam). X: [N, d] array/tensor or a
        gmlab DataModule. Returns self."""
        self._check_params()
        for attr in ("n_features_in_", "input_kind_", "model_"):
            self.__dict__.pop(attr, None)
        if isinstance(X, L.LightningDataModule):
            dm = X
            dm.setup("fit")
            x_train = dm.tensors("train")[0] if hasattr(dm, "tensors") else None
            shape = tuple(getattr(dm, "shape", ()) or tuple(x_train.shape[1:]))
            kind = kind_of(x_train) if x_train is not None else PIXELS
            n = len(x_train) if x_train is not None else None
        else:
            x, _ = as_batch(X)
            kind = kind_of(x)
            x = as_kind(x, kind)
            shape = (x.shape[1],)
            dm = _TensorDataModule(x, batch_size=self.batch_size)
            n = len(x)
        if n is not None and n < 2:
            raise ShapeError(f"MFA needs at least 2 samples to fit, got n_samples={n}")
        if n is not None and self.n_components > n:
            raise ConfigError(
                f"n_components={self.n_components} is larger than the number of samples "
                f"({n}): each component needs points of its own; use n_components <= {n}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            model = MFAModel(
                data_shape=list(shape),
                preprocess={"dequantize": True, "scale": "unit"},
                n_components=int(self.n_components),
                n_factors=int(self.n_factors),
                noise=self.noise,
                init=self.init,
                noise_floor=self.noise_floor,
                noise_reg=self.noise_reg,
                reseed_below=self.reseed_below,
                feature_sampling=self.feature_sampling,
                seed=int(self.random_state),
            )
            history = _History(self.tol)
            with _quiet(not self.verbose):
                self._trainer(int(self.max_iter), [history]).fit(model, datamodule=dm)
                if self.finetune_epochs > 0:
                    model = self._finetune(model, dm)
        self.model_ = model.eval()
        self.n_features_in_ = model.num_dims
        self.input_kind_ = kind
        self.log_likelihood_ = list(history.history)
        self.n_iter_ = history.passes
        self.converged_ = history.converged
        m = model.mixture
        self.means_ = m.means.detach().cpu().numpy()
        self.factors_ = m.factors.detach().cpu().numpy()
        self.noise_variance_ = m.noise_variance.detach().cpu().numpy()
        self.weights_ = m.weights.detach().cpu().numpy()
        return self

    def _trainer(self, max_epochs: int, callbacks: list) -> L.Trainer:
        return L.Trainer(
            accelerator=self.accelerator,
            devices=self.devices,
            max_epochs=max_epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=bool(self.verbose),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            use_distributed_sampler=False,
            callbacks=callbacks,
        )

    def _finetune(self, em: MFAModel, dm) -> MFAFinetune:
        """`finetune_epochs` of Adam at `finetune_lr`, from the EM fit's parameters."""
        hp = {k: em.hparams[k] for k in ("data_shape", "preprocess", "noise_floor", "seed")}
        model = MFAFinetune(
            **hp,
            n_components=em.mixture.n_components,
            n_factors=em.mixture.n_factors,
            noise=em.mixture.noise,
            optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": self.finetune_lr},
        )
        model.mixture.load_state_dict(em.mixture.state_dict())
        model.initialized.fill_(True)
        self._trainer(int(self.finetune_epochs), []).fit(model, datamodule=dm)
        return model

    # ----------------------------------------------------------- inference
    def _model_space(self, X, name: str = "X") -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Validated X -> (model-space points [N, d], log-det [N], came as numpy)."""
        x, is_numpy = self._input(X, name)
        model = self.model_
        x = x.to(model.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state + 1)
            xm, log_det = model.preprocess(x)
        return xm.to(model.mixture.means.dtype), log_det, is_numpy

    @torch.no_grad()
    def _log_prob(self, X, name: str = "X") -> tuple[torch.Tensor, bool]:
        x, log_det, is_numpy = self._model_space(X, name)
        return self.model_.mixture.log_prob(x) + log_det, is_numpy

    def score_samples(self, X):
        """[N] log-density of each sample (nats; for integer pixels: of the dequantized
        y = (x + u) / 256 on the unit cube)."""
        return self._out(*self._log_prob(X))

    def score(self, X, y=None) -> float:
        """Mean log-likelihood per sample (nats)."""
        return float(np.mean(np.asarray(torch.as_tensor(self.score_samples(X)).cpu())))

    @torch.no_grad()
    def predict_proba(self, X):
        """[N, K] posterior component probabilities."""
        x, _, is_numpy = self._model_space(X)
        return self._out(self.model_.mixture.responsibilities(x), is_numpy)

    @torch.no_grad()
    def predict(self, X):
        """[N] MAP component of each sample."""
        x, _, is_numpy = self._model_space(X)
        return self._out(self.model_.mixture.predict(x), is_numpy)

    @torch.no_grad()
    def sample(self, n_samples: int = 1, with_noise: bool = True):
        """(X [n, d], components [n]) drawn from the model (numpy arrays); pixel values in
        [0, 255] when fitted on integer pixels."""
        check_is_fitted(self, "model_")
        if not _is_int(n_samples) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        gen = torch.Generator(device=self.model_.device).manual_seed(self.random_state + 2)
        x, comp = self.model_.mixture.sample(int(n_samples), with_noise, generator=gen)
        if self.input_kind_ == PIXELS:
            x = self.model_.preprocess.to_pixels(x)
        return x.cpu().numpy(), comp.cpu().numpy()

    @torch.no_grad()
    def reconstruct(self, X, mask, mode: str = "map"):
        """In-painting: keep X where `mask` is True, fill the rest with the conditional
        mean given the kept coordinates (under the MAP component, or mode="mixture":
        responsibility-weighted). mask: bool [N, d] or [d]."""
        x, is_numpy = self._input(X)
        m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        if m.dtype != torch.bool:
            raise ShapeError(f"mask must be boolean (True = observed), got dtype {m.dtype}")
        m = m.reshape(1, -1).expand(x.shape[0], -1) if m.dim() == 1 else m.reshape(len(m), -1)
        if m.shape != x.shape:
            raise ShapeError(f"mask must have shape {tuple(x.shape)} or [{x.shape[1]}]")
        model = self.model_
        x, m = x.to(model.device), m.to(model.device)
        pixels = self.input_kind_ == PIXELS
        xm = model.preprocess.to_model_space(x) if pixels else x
        rec = model.mixture.reconstruct(xm.to(model.mixture.means.dtype), m, mode)
        if pixels:
            rec = torch.where(m, x.to(rec.dtype), model.preprocess.to_pixels(rec))
        return self._out(rec, is_numpy)

    @torch.no_grad()
    def bpd(self, X_uint8, per_sample: bool = False):
        """Bits/dim of pixels (0..255) on gmlab's convention:
        (-log p(y) + d ln 256) / (d ln 2) with y = (x + u) / 256. Only for a model fitted on
        integer pixels: bits/dim of float data have no such convention (use
        -score_samples(X) / (d ln 2) for bits per dimension of their density). Mean, or [N]
        values."""
        check_is_fitted(self, "model_")
        if self.input_kind_ != PIXELS:
            raise ShapeError(
                "bpd needs a model fitted on 8-bit pixels (an integer array), but this MFA "
                "was fitted on floats, taken as continuous values: fit it on the uint8 pixels, "
                "or use -score_samples(X) / (n_features * ln 2) for bits per dimension of "
                "their density"
            )
        ll, is_numpy = self._log_prob(X_uint8, "X_uint8")
        bits = bits_per_dim(ll, num_dims=self.n_features_in_)
        if per_sample:
            return self._out(bits, is_numpy)
        return float(bits.mean())


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Lightning's informational messages (GPU available, ...) while fitting."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _History(L.Callback):
    """Record train/ll per EM pass; stop EM when it improves by less than `tol`."""

    def __init__(self, tol: float):
        self.tol = tol
        self.history: list[float] = []
        self.passes = 0
        self.converged = False

    def on_train_epoch_end(self, trainer, pl_module):
        self.passes = trainer.current_epoch + 1
        value = trainer.callback_metrics.get("train/ll")
        if value is None:
            return
        self.history.append(float(value))
        h = self.history
        if self.tol > 0 and len(h) >= 2 and abs(h[-1] - h[-2]) < self.tol:
            self.converged = True
            trainer.should_stop = True


class _TensorDataModule(InMemoryDataModule):
    """One in-memory tensor as the training split (no validation or test data)."""

    def __init__(self, x: torch.Tensor, batch_size: int):
        super().__init__(batch_size=batch_size, val_size=0, shape=tuple(x.shape[1:]))
        self._x = x

    def load_splits(self):
        y = torch.zeros(len(self._x), dtype=torch.long)
        return {"train": (self._x, y), "test": (self._x[:0], y[:0])}
