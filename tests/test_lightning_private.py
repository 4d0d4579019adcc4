"""The private parts of Lightning (and one of torch's TensorBoard writer) that gmlab reads or
overrides, checked on a real Trainer: each test names the gmlab code that depends on them,
so that a Lightning release that moves them fails here with that name instead of somewhere
in a training run (or, worse, silently: a renamed method that gmlab overrides is no longer
called). pyproject.toml caps lightning below the next minor release; raise the cap once
this file passes on it."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from gmlab.callbacks.checkpointing import Checkpoint
from gmlab.models.base import writes_step_logs
from gmlab.models.mfa import MFAModel

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHES, EPOCHS, EVERY = 4, 2, 2  # per epoch; log_every_n_steps set during the fit


def need(ok: bool, what: str, user: str) -> None:
    """Fail naming the Lightning part that changed and the gmlab code that needs it."""
    if not ok:
        pytest.fail(
            f"Lightning {L.__version__}: {what} is gone or changed; {user} depends on it. "
            "Adapt that code, then the bound on lightning in pyproject.toml.",
            pytrace=False,
        )


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(2 * BATCHES, 2)), batch_size=2)


class Tiny(L.LightningModule):
    """Least squares of a linear layer; records what gmlab's helpers see in each step."""

    def __init__(self, manual: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.automatic_optimization = not manual
        self.writes: list[bool] = []  # writes_step_logs per training step
        self.trainer_ref: list[bool] = []  # `_trainer` is the fitting trainer

    def training_step(self, batch, batch_idx):
        self.trainer_ref.append(getattr(self, "_trainer", None) is self.trainer)
        self.writes.append(writes_step_logs(self.trainer))
        if not self.automatic_optimization:
            MFAModel._count_update(self)  # an EM update counted as a step
            return None
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(Logger):
    """The (step, metric names) Lightning writes to a logger."""

    name, version = "recorder", 0

    def __init__(self):
        super().__init__()
        self.writes: list[tuple[int, set[str]]] = []

    def log_metrics(self, metrics, step=None):
        self.writes.append((step, set(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Probe(L.Callback):
    """Sets `log_every_n_steps` at the start of the fit (as gmlab's LogEveryEpoch does) and
    dumps a checkpoint through the trainer's checkpoint connector at its end."""

    def on_fit_start(self, trainer, pl_module):
        trainer.log_every_n_steps = EVERY

    def on_train_end(self, trainer, pl_module):
        dump = trainer._checkpoint_connector.dump_checkpoint
        self.dumps = dump(False), dump(True)


class SpyCheckpoint(Checkpoint):
    """gmlab's checkpoint callback, counting the calls of the methods it overrides."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {"_save_topk_checkpoint": 0, "_save_checkpoint": 0}

    def _save_topk_checkpoint(self, trainer, monitor_candidates):
        self.calls["_save_topk_checkpoint"] += 1
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_checkpoint(self, trainer, filepath):
        self.calls["_save_checkpoint"] += 1
        super()._save_checkpoint(trainer, filepath)


def fit(tmp_path, model: Tiny, **trainer_args) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=EPOCHS,
        log_every_n_steps=50,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_args,
    )
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader())
    return trainer


@pytest.fixture(scope="module")
def automatic(tmp_path_factory):
    """One fit of `Tiny` with the recorder, the probe and gmlab's checkpoint callback."""
    tmp = tmp_path_factory.mktemp("fit")
    model, recorder, probe = Tiny(), Recorder(), Probe()
    spy = SpyCheckpoint(dirpath=tmp / "checkpoints", monitor="val/loss", save_last=True)
    trainer = fit(tmp, model, logger=recorder, callbacks=[probe, spy])
    return model, recorder, probe, spy, trainer


STEP_LOGS = "gmlab.models.base.writes_step_logs (GenerativeModel.log_step)"
EM_STEPS = "gmlab.models.mfa.MFAModel._count_update"
SAVE = "gmlab.callbacks.checkpointing.Checkpoint._save_checkpoint"
TRAINER_PATHS = {
    "_logger_connector.should_update_logs": STEP_LOGS,
    "_checkpoint_connector.dump_checkpoint": SAVE,
    "fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_ready": EM_STEPS,
    "fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_completed": EM_STEPS,
}


@pytest.mark.parametrize("path, user", TRAINER_PATHS.items())
def test_trainer_paths(path, user):
    found = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for name in path.split("."):
        found = getattr(found, name, None)
    need(found is not None, f"Trainer.{path}", user)


def test_step_log_decision(automatic):
    """`trainer._logger_connector.should_update_logs`, read live after `log_every_n_steps`
    changed, decides which steps reach the loggers."""
    model, recorder, *_ = automatic
    logged = [step for step, names in recorder.writes if "train/loss" in names]
    decided = [i for i, writes in enumerate(model.writes) if writes]
    assert len(model.writes) == BATCHES * EPOCHS
    need(
        logged == decided == list(range(EVERY - 1, BATCHES * EPOCHS, EVERY)),
        "the step-logging decision (should_update_logs, log_every_n_steps set during a fit)",
        f"{STEP_LOGS} and gmlab.callbacks.logging_interval.LogEveryEpoch",
    )


def test_lightning_module_trainer_reference(automatic):
    model = automatic[0]
    need(
        all(model.trainer_ref) and getattr(Tiny(), "_trainer", "missing") is None,
        "LightningModule._trainer (None until a trainer is attached)",
        "gmlab.models.base.GenerativeModel (log_step, ...), VAE and RealNVP",
    )


def test_checkpoint_connector_dump(automatic):
    model, _, probe, *_ = automatic
    full, weights = probe.dumps
    assert full["state_dict"].keys() == model.state_dict().keys()
    assert "optimizer_states" in full and "optimizer_states" not in weights
    assert full["global_step"] == BATCHES * EPOCHS and "loops" in full


MODEL_CHECKPOINT_METHODS = {
    "_save_topk_checkpoint": ["trainer", "monitor_candidates"],
    "_save_checkpoint": ["trainer", "filepath"],
    "_save_last_checkpoint": ["trainer", "monitor_candidates"],
    "_should_skip_saving_checkpoint": ["trainer"],
    "_monitor_candidates": ["trainer"],
}


@pytest.mark.parametrize("name, params", MODEL_CHECKPOINT_METHODS.items())
def test_model_checkpoint_private_methods(name, params):
    method = getattr(ModelCheckpoint, name, None)
    signature = list(inspect.signature(method).parameters)[1:] if method else None
    need(
        signature == params,
        f"ModelCheckpoint.{name}({', '.join(params)})",
        "gmlab.callbacks.checkpointing.Checkpoint",
    )


def test_model_checkpoint_calls_what_gmlab_overrides(automatic):
    """The overrides run (a rename would skip gmlab's atomic writes silently), and the
    state that gmlab's methods read and move is there."""
    *_, spy, trainer = automatic
    user = "gmlab.callbacks.checkpointing.Checkpoint"
    need(
        spy.calls["_save_topk_checkpoint"] == EPOCHS and spy.calls["_save_checkpoint"] > 0,
        "ModelCheckpoint calling _save_topk_checkpoint and _save_checkpoint",
        user,
    )
    need(
        spy._last_global_step_saved == trainer.global_step
        and spy._last_checkpoint_saved == spy.last_model_path,
        "ModelCheckpoint._last_global_step_saved / _last_checkpoint_saved",
        user,
    )
    keys = {"dirpath", "best_model_path", "kth_best_model_path", "last_model_path", "best_k_models"}
    need(
        keys <= spy.state_dict().keys(),
        f"ModelCheckpoint.state_dict() keys {sorted(keys)}",
        f"{user}.load_state_dict",
    )


def test_manual_optimization_step_counter(tmp_path):
    """An EM update is counted on the manual-optimization loop's optimizer-step progress:
    `global_step` reads it, and `max_steps` stops on it."""
    model = Tiny(manual=True)
    trainer = fit(tmp_path, model, logger=False, enable_checkpointing=False, max_steps=3)
    need(
        trainer.global_step == 3 == len(model.writes),
        "Trainer.global_step reading manual_optimization.optim_step_progress.total.completed",
        EM_STEPS,
    )


def test_tensorboard_file_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path)
    file_writer = getattr(writer, "_get_file_writer", lambda: None)()
    writer.close()
    need(
        hasattr(file_writer, "add_summary"),
        "torch's SummaryWriter._get_file_writer().add_summary",
        "gmlab.utils.runs.log_hparams_session",
    )


def test_wandb_logger_run_attribute(tmp_path):
    pytest.importorskip("wandb", reason='the `loggers` extra is not installed ("[loggers]")')
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=tmp_path, offline=True)
    need(
        "_experiment" in vars(logger) and logger._experiment is None,
        "WandbLogger._experiment (None until the run starts)",
        "gmlab.utils.trackers.WandbRunLogger.end_run",
    )
