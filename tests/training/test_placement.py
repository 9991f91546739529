"""The code CUDA runs (bf16 autocast, channels_last, bf16 cached features, resizing on
the device, non-blocking copies), run on the CPU through the same functions: a dtype or
memory-format mistake fails here, not on a user's GPU."""

from __future__ import annotations

import pytest
import torch

from src import artifacts
from src.config.cifar import IMAGENET_MEAN, IMAGENET_STD
from src.config.schema import ModelConfig, TrainConfig, TransferConfig
from src.training import device
from src.training.augment import InputPipeline, input_pipeline
from src.training.checkpoint import load_checkpoint
from src.training.device import Placement, to_device_async
from src.training.feature_cache import prepare_transfer_training
from src.training.loop import fit
from src.training.models import build_cnn, build_resnet
from src.training.splits import TensorSplits
from src.training.steps import evaluate, train_step
from tests.conftest import make_images

GPU_LIKE = Placement(torch.device("cpu"), bf16=True, channels_last=True)
TINY_MODEL = ModelConfig(filters=(8, 16), kernel_size=3, fc=(16,), batch_norm=True)


def _splits(n_train: int = 3, n_eval: int = 1) -> TensorSplits:
    parts = []
    for n, seed in ((n_train, 3), (n_eval, 4), (n_eval, 5)):
        x, y = make_images(n, seed=seed)
        parts += [torch.from_numpy(x), torch.from_numpy(y)]
    return TensorSplits(*parts)


def _float_tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree] if tree.is_floating_point() else []
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _float_tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _float_tensors(v)]
    return []


def _assert_float32(tree, what: str) -> None:
    dtypes = {t.dtype for t in _float_tensors(tree)}
    assert dtypes == {torch.float32}, f"{what}: {dtypes}"


CPU = torch.device("cpu")


def test_the_one_decision_follows_the_device():
    # conftest: this CPU has no native bf16
    assert Placement.for_device(CPU) == Placement(CPU)
    assert Placement.for_device(CPU).reason == "cpu without native bf16"
    if not torch.cuda.is_available():  # a device object needs no GPU
        cuda = Placement.for_device(torch.device("cuda"))
        assert cuda.bf16 and cuda.channels_last and cuda.feature_dtype == torch.bfloat16
    forced = Placement.for_device(CPU, bf16=True, channels_last=True)
    assert forced == GPU_LIKE


@pytest.mark.parametrize(
    ("flags", "expected", "reason"),
    [
        (("avx512_bf16",), GPU_LIKE, "cpu avx512_bf16"),
        (("avx512_bf16", "amx_bf16"), GPU_LIKE, "cpu avx512_bf16 amx_bf16"),
        ((), Placement(CPU), "cpu without native bf16"),
    ],
    ids=["avx512-bf16", "amx", "no-bf16"],
)
def test_auto_runs_bf16_where_the_cpu_has_it_natively(monkeypatch, flags, expected, reason):
    monkeypatch.setattr(device, "cpu_bf16_flags", lambda: flags)
    placement = Placement.for_device(CPU, precision="auto")
    assert placement == expected and placement.reason == reason
    assert placement.describe() == {
        "numerics": "bf16" if flags else "fp32",
        "numerics_reason": reason,
        "channels_last": bool(flags),
    }


@pytest.mark.parametrize("flags", [("amx_bf16",), ()], ids=["bf16-cpu", "no-bf16"])
def test_precision_key_overrides_the_detection(monkeypatch, flags):
    monkeypatch.setattr(device, "cpu_bf16_flags", lambda: flags)
    assert Placement.for_device(CPU, precision="fp32") == Placement(CPU)
    assert Placement.for_device(CPU, precision="bf16") == GPU_LIKE
    assert Placement.for_device(CPU, precision="fp32").reason == "common.precision fp32"


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.undo()  # the real function, on a written cpuinfo
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx2\n")
    assert device.cpu_bf16_flags() == ("avx512_bf16",)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx2\n")
    assert device.cpu_bf16_flags() == ()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: amx_tile amx_bf16 avx512_bf16\n")
    assert device.cpu_bf16_flags() == ("avx512_bf16", "amx_bf16")
    monkeypatch.setattr(device, "CPUINFO", tmp_path / "missing")
    assert device.cpu_bf16_flags() == ()


def test_a_bf16_step_keeps_float32_weights_grads_and_loss():
    torch.manual_seed(0)
    model = GPU_LIKE.place_model(build_cnn(TINY_MODEL))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _splits().train_x[:8], _splits().train_y[:8]
    pipeline = input_pipeline(TrainConfig(device="cpu"), GPU_LIKE)
    logits, loss = train_step(
        model, optimizer, torch.nn.CrossEntropyLoss(), pipeline(x, train=True), y, GPU_LIKE
    )
    assert logits.dtype == torch.bfloat16  # the forward pass ran under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    _assert_float32(optimizer.state_dict()["state"], "optimizer state")


def test_non_blocking_copy_runs_on_the_cpu():
    t = torch.arange(6)
    assert torch.equal(to_device_async(t, torch.device("cpu")), t)


def test_cnn_trains_in_bf16_and_channels_last_on_the_cpu(tmp_path):
    cfg = TrainConfig(
        lr=0.05,
        momentum=0.9,
        batch_size=10,
        epochs=2,
        early_stop_count=0,
        device="cpu",
        eval_batch_size=16,
    )
    torch.manual_seed(0)
    model = GPU_LIKE.place_model(build_cnn(TINY_MODEL))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    pipeline = input_pipeline(cfg, GPU_LIKE)
    data = _splits()
    x = pipeline(data.val_x[:4], train=False)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    with GPU_LIKE.autocast():  # the forward pass really runs in bf16
        assert model(x).dtype == torch.bfloat16

    ckpt = tmp_path / "ckpt.pt"
    result = fit(
        model, data, cfg, pipeline, checkpoint_path=ckpt, progress=False, placement=GPU_LIKE
    )
    assert len(result.history) == result.steps == 6  # 3 steps an epoch, each validated
    for row in result.history:
        assert all(torch.isfinite(torch.tensor(row[k])) for k in ("train_loss", "val_loss"))
    assert 0.0 <= result.final["test_accuracy"] <= 1.0
    _assert_float32(dict(model.state_dict()), "weights after training")
    saved = load_checkpoint(ckpt, "")
    _assert_float32(saved["model"], "checkpoint weights")
    _assert_float32(saved["optimizer"]["state"], "checkpoint optimizer state")
    _assert_float32(saved["best"]["state"], "checkpoint best state")

    artifacts.write_model_file(tmp_path / "m.pt", model, "baseline", cfg, result.final)
    _assert_float32(artifacts.read_model_file(tmp_path / "m.pt")["model"], "model file")
    again = evaluate(model, data.test_x, data.test_y, pipeline, 7, placement=GPU_LIKE)
    assert again["accuracy"] == pytest.approx(result.final["test_accuracy"])


def _resnet_cfg(**kw) -> TransferConfig:
    train = TrainConfig(
        optimizer="adam",
        lr=5e-4,
        batch_size=10,
        epochs=1,
        device="cpu",
        eval_batch_size=16,
        mean=IMAGENET_MEAN,  # the backbone's own input scaling (TransferConfig checks it)
        std=IMAGENET_STD,
    )
    return TransferConfig(**{"weights": "none", "image_size": 40, **kw}, train=train)


@pytest.mark.parametrize("cached", [True, False], ids=["feature-cache", "resize-on-device"])
def test_resnet_trains_in_bf16_and_channels_last_on_the_cpu(cached):
    cfg = _resnet_cfg(cache_features=cached)
    torch.manual_seed(0)
    model = GPU_LIKE.place_model(build_resnet(cfg))
    pipeline = InputPipeline(
        cfg.train.mean, cfg.train.std, cfg.train.augment, cfg.image_size, channels_last=True
    )
    x = pipeline(_splits().val_x[:2], train=False)  # resized 32 -> 40 px, on the batch
    assert x.shape[-2:] == (40, 40) and x.is_contiguous(memory_format=torch.channels_last)
    training = prepare_transfer_training(model, cfg, _splits(2, 1), pipeline, 0, GPU_LIKE)
    assert training.cached is cached
    if cached:  # stored as autocast computes them, fed to the head as channels_last
        assert training.data.train_x.dtype == torch.bfloat16
        head_input = training.pipeline(training.data.train_x[:2], train=True)
        assert head_input.is_contiguous(memory_format=torch.channels_last)
    result = fit(
        training.fit_model,
        training.data,
        training.train_cfg,
        training.pipeline,
        progress=False,
        placement=GPU_LIKE,
    )
    losses = [row[k] for row in result.history for k in ("train_loss", "val_loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    _assert_float32(dict(model.state_dict()), "ResNet weights after training")


def test_the_stage_runs_the_gpu_path_on_the_cpu(prepared, monkeypatch):
    """pipelines/train with the decision forced as on CUDA: the stage places the
    model, builds the pipeline and trains through it, and writes float32 outputs."""
    from pipelines import train

    seen = []

    def gpu_like(cls, device, **_):
        seen.append(device)
        return cls(device, bf16=True, channels_last=True)

    monkeypatch.setattr(Placement, "for_device", classmethod(gpu_like))
    train.main(["baseline", "--no-progress"])
    assert seen
    payload = artifacts.read_model_file(prepared / "models/baseline.pt")
    _assert_float32(payload["model"], "the stage's model file")
    assert all(0.0 <= v for v in payload["metrics"].values())
