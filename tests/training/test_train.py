"""The training loop: learns, stops early by the course rule, restores the best
checkpoint, is deterministic on CPU and resumes from a checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from src.config.schema import AugmentConfig, ModelConfig, TrainConfig
from src.training.augment import InputPipeline, random_crop, random_hflip
from src.training.loop import NonFiniteLossError, fit, should_early_stop
from src.training.models import build_cnn
from src.training.splits import TensorSplits
from src.training.steps import evaluate
from tests.conftest import make_images

TINY_MODEL = ModelConfig(filters=(8, 16), kernel_size=3, fc=(16,))


def _splits(shuffle_val_labels: bool = False) -> TensorSplits:
    x, y = make_images(24, seed=3)
    vx, vy = make_images(4, seed=4)
    tx, ty = make_images(4, seed=5)
    if shuffle_val_labels:  # fitting the training set then makes validation loss climb
        vy = vy[torch.randperm(len(vy), generator=torch.Generator().manual_seed(0)).numpy()]
    t = torch.from_numpy
    return TensorSplits(t(x), t(y), t(vx), t(vy), t(tx), t(ty))


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=0.05, batch_size=16, epochs=3, device="cpu", eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg: TrainConfig, data: TensorSplits | None = None, **kw):
    torch.manual_seed(0)
    model = build_cnn(TINY_MODEL)
    pipeline = InputPipeline(cfg.mean, cfg.std, cfg.augment)
    return model, fit(model, data or _splits(), cfg, pipeline, seed=0, progress=False, **kw)


def test_learns_on_a_tiny_set():
    cfg = _cfg(optimizer="adam", lr=3e-3, epochs=6, early_stop_count=0)
    _, result = _fit(cfg)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] * 0.7
    assert result.final["final_train_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert len(result.history) == 6 * 2  # two validations per epoch


@pytest.mark.parametrize(
    ("losses", "count", "stop"),
    [
        ([3, 2, 1, 1.1, 1.2], 4, False),
        ([3, 2, 1, 1.1, 1.2, 1.05], 4, True),  # oldest of the last four is the best
        ([1, 2, 3], 4, False),  # too few validations
        ([1, 2, 3, 4], 0, False),  # disabled
    ],
)
def test_course_early_stopping_rule(losses, count, stop):
    assert should_early_stop(losses, count) is stop


def test_early_stopping_fires_and_best_checkpoint_is_evaluated():
    cfg = _cfg(optimizer="adam", lr=1e-2, epochs=20, early_stop_count=3)
    model, result = _fit(cfg, _splits(shuffle_val_labels=True))
    assert result.early_stop_step is not None and result.early_stop_step < 20 * 6
    best = min(result.history, key=lambda r: r["val_loss"])
    assert result.best_step == best["step"]
    # the final val figures are those of the restored best weights, in eval mode
    assert result.final["final_val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    data = _splits(shuffle_val_labels=True)
    pipeline = InputPipeline(cfg.mean, cfg.std, cfg.augment)
    again = evaluate(model, data.val_x, data.val_y, pipeline, 7)  # other batch size, same mean
    assert again["loss"] == pytest.approx(result.final["final_val_loss"], rel=1e-5)


def test_same_seed_same_metrics():
    cfg = _cfg(augment=AugmentConfig(crop_padding=4, hflip=True))
    _, a = _fit(cfg)
    _, b = _fit(cfg)
    assert a.final == b.final
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    cfg = _cfg(epochs=3, augment=AugmentConfig(crop_padding=2, hflip=True))
    _, full = _fit(cfg)

    ckpt = tmp_path / "ckpt.pt"

    class Kill(Exception):
        pass

    def kill_at_third(row, _):
        if len(calls) == 2:
            raise Kill
        calls.append(row)

    calls: list = []
    with pytest.raises(Kill):
        _fit(cfg, checkpoint_path=ckpt, config_key="k", on_validation=kill_at_third)
    assert ckpt.exists()
    _, resumed = _fit(cfg, checkpoint_path=ckpt, config_key="k")
    assert resumed.resumed_from_step > 0
    assert resumed.final == full.final
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]


def test_checkpoint_of_another_config_is_ignored(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    cfg = _cfg(epochs=1)
    _fit(cfg, checkpoint_path=ckpt, config_key="a")
    _, other = _fit(cfg, checkpoint_path=ckpt, config_key="b")
    assert other.resumed_from_step == 0


def test_non_finite_loss_stops_with_a_clear_error():
    cfg = _cfg(lr=1e30, epochs=2)
    with pytest.raises(NonFiniteLossError, match="non-finite .* at step"):
        _fit(cfg)


def test_dry_run_is_a_few_batches():
    cfg = _cfg(dry_run=True, epochs=50, batch_size=4)
    _, result = _fit(cfg)
    assert result.steps == 4


def test_batch_crop_and_flip():
    x = torch.arange(2 * 4 * 4 * 1, dtype=torch.uint8).reshape(2, 4, 4, 1)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    # every crop is a window of the zero-padded image
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, i : i + 4, j : j + 4] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    flipped = random_hflip(x, torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(1))


def test_augmentation_only_touches_training_batches():
    pipeline = InputPipeline((0.5,) * 3, (0.25,) * 3, AugmentConfig(crop_padding=4, hflip=True))
    x = torch.from_numpy(make_images(2, seed=0)[0])
    assert torch.equal(pipeline(x, train=False), pipeline(x, train=False))
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(pipeline(x, train=True, generator=g), pipeline(x, train=False))


def test_train_config_rejects_nesterov_without_momentum():
    from src.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="nesterov"):
        dataclasses.replace(_cfg(), nesterov=True)


class _Recording(InputPipeline):
    """The real input pipeline, recording the size of every batch it prepares."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg.mean, cfg.std, cfg.augment)
        self.sizes: dict[bool, list[int]] = {True: [], False: []}

    def __call__(self, x, train, generator=None):
        self.sizes[train].append(len(x))
        return super().__call__(x, train=train, generator=generator)


def test_epochs_drop_the_last_partial_batch_and_evaluation_sees_every_image():
    data = _splits()  # 240 training images: 7 full batches of 32, 16 images left over
    cfg = _cfg(batch_size=32, epochs=3, early_stop_count=0, eval_batch_size=64)
    torch.manual_seed(0)
    pipeline = _Recording(cfg)
    result = fit(build_cnn(TINY_MODEL), data, cfg, pipeline, seed=0, progress=False)
    assert pipeline.sizes[True] == [32] * 7 * 3
    assert result.steps == 21 and result.epochs_run == 3
    assert [r["step"] for r in result.history] == [3, 6, 9, 12, 15, 18, 21]  # 7 // 2 = 3
    # validations and the final figures: every image of val (40), train (240), test (40)
    n_val = len(data.val_y)
    evaluated = sum(pipeline.sizes[False])
    assert evaluated == n_val * len(result.history) + len(data.train_y) + n_val + len(data.test_y)


def test_course_schedule_at_batch_64():
    """45,000 images at batch 64: 703 steps an epoch, a validation every 351."""
    from src.training.splits import train_size

    cfg = _cfg(batch_size=64, validations_per_epoch=2)
    steps = train_size(45_000, cfg) // cfg.batch_size
    assert steps == 703 and steps // cfg.validations_per_epoch == 351


def test_training_set_smaller_than_a_batch_is_a_config_error():
    from src.runtime.errors import ConfigError
    from src.training.splits import check_train_size

    with pytest.raises(ConfigError, match=r"'baseline\.train\.subset'.*fewer than one batch"):
        _fit(_cfg(subset=10, batch_size=16), params_key="baseline.train")
    with pytest.raises(ConfigError, match=r"'train\.batch_size'.*more than the 240 training"):
        _fit(_cfg(batch_size=256))
    check_train_size(240, _cfg(subset=16, batch_size=16))  # one full batch is enough


def test_resume_after_the_early_stop_does_not_train_on(tmp_path, monkeypatch):
    """Killed during the final evaluation of a run that has decided to stop: the
    resumed run only evaluates, and ends exactly as the uninterrupted one."""
    import src.training.loop as train_module

    cfg = _cfg(optimizer="adam", lr=1e-2, epochs=20, early_stop_count=3)
    data = _splits(shuffle_val_labels=True)
    _, full = _fit(cfg, data)
    assert full.early_stop_step is not None and full.steps < 20 * 15

    real_evaluate = train_module.evaluate
    n_train = len(data.train_y)

    def killed_in_final_evaluation(model, x, y, *args, **kwargs):
        if len(y) == n_train:  # only the final figures evaluate the training split
            raise KeyboardInterrupt
        return real_evaluate(model, x, y, *args, **kwargs)

    ckpt = tmp_path / "ckpt.pt"
    monkeypatch.setattr(train_module, "evaluate", killed_in_final_evaluation)
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, data, checkpoint_path=ckpt, config_key="k")
    monkeypatch.setattr(train_module, "evaluate", real_evaluate)
    saved = train_module.load_checkpoint(ckpt, "k")
    assert saved["early_stop_step"] == full.early_stop_step == saved["step"]

    _, resumed = _fit(cfg, data, checkpoint_path=ckpt, config_key="k")
    assert resumed.resumed_from_step == full.steps
    assert resumed.final == full.final
    assert (resumed.steps, resumed.best_step, resumed.early_stop_step) == (
        full.steps,
        full.best_step,
        full.early_stop_step,
    )
    untimed = lambda h: [{k: v for k, v in r.items() if k != "images_per_s"} for r in h]  # noqa: E731
    assert untimed(resumed.history) == untimed(full.history)


class _WritesMarker:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    from src.training.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint

    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"version": CHECKPOINT_VERSION, "config_key": "k", "extra": _WritesMarker(marker)}, ckpt
    )
    with pytest.raises(CheckpointError, match=str(ckpt)):
        load_checkpoint(ckpt, "k")
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        _fit(_cfg(epochs=1), checkpoint_path=ckpt, config_key="k")
    assert not marker.exists(), "nothing in the file ran"
    torch.load(ckpt, weights_only=False)  # the file is what it claims: unpickled, it runs
    assert marker.exists()


def test_every_crafted_checkpoint_is_refused_by_what_it_names(tmp_path):
    """os.system, os.popen, subprocess.Popen, eval, exec: whatever words torch uses for
    each, the refusal names the file and the global, and the file stays as it was."""
    from src.training.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint
    from tests.crafted import crafted_files, is_live

    marker = tmp_path / "code-ran"
    files = crafted_files(
        tmp_path / "ckpts",
        marker,
        wrap=lambda payload: {"version": CHECKPOINT_VERSION, "config_key": "k", "x": payload},
    )
    for name, ckpt in files.items():
        before = ckpt.read_bytes()
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ckpt, "k")
        message = str(info.value)
        assert str(ckpt) in message and "refused: reading it needs arbitrary unpickling" in message
        assert f"it names {name})" in message and "\n" not in message
        assert not marker.exists(), f"{name}: code ran"
        assert ckpt.read_bytes() == before
        assert is_live(ckpt, marker), f"{name}: the payload is live when fully unpickled"


def test_a_torn_or_garbage_checkpoint_is_ignored_not_refused(tmp_path, capsys):
    from src.training.checkpoint import load_checkpoint

    ckpt = tmp_path / "ckpt.pt"
    torch.save({"version": 2, "config_key": "k", "w": torch.ones(3)}, ckpt)
    whole = ckpt.read_bytes()
    for payload in (whole[: len(whole) // 2], b"\x00" * 64, b"garbage", b""):
        ckpt.write_bytes(payload)
        assert load_checkpoint(ckpt, "k") is None
        assert "ignoring unreadable checkpoint" in capsys.readouterr().out


def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path):
    cfg = _cfg(epochs=1, optimizer="sgd", momentum=0.9, scheduler="onecycle")
    ckpt = tmp_path / "ckpt.pt"
    _fit(cfg, checkpoint_path=ckpt, config_key="k")
    state = torch.load(ckpt, weights_only=True)  # raises on anything else
    assert state["version"] >= 2 and state["history"]
