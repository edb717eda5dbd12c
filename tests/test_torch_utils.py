"""labkit.torch_utils: device choice, seeding, autocast, atomic checkpoints."""

import pytest

torch = pytest.importorskip("torch")
from labkit import torch_utils  # noqa: E402

pytestmark = pytest.mark.torch


def test_pick_device_cpu_when_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # never chosen on its own
    assert torch_utils.pick_device() == torch.device("cpu")


def test_pick_device_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_utils.pick_device().type == "cuda"


def test_pick_device_refuses_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        torch_utils.pick_device("cuda")
    with pytest.raises(ValueError, match="no usable MPS"):
        torch_utils.pick_device("mps")
    assert torch_utils.pick_device("cpu") == torch.device("cpu")


def test_cpu_threads_takes_every_core_this_process_may_use(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(torch_utils.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
        assert torch_utils.cpu_threads() == 4 and torch.get_num_threads() == 4
        monkeypatch.setattr(torch_utils.os, "sched_getaffinity", lambda _: {0}, raising=False)
        assert torch_utils.cpu_threads() == 1
        assert torch_utils.cpu_threads(2) == 2 and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="at least 1"):
            torch_utils.cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_seed_everything_repeats_draws():
    import random

    import numpy as np

    torch_utils.seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(3))
    torch_utils.seed_everything(7)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])
    assert torch.are_deterministic_algorithms_enabled()


def test_seed_everything_gives_identical_training_on_cpu():
    def train():
        torch_utils.seed_everything(3)
        net = torch.nn.Conv3d(1, 2, 3, padding=1)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            net(torch.randn(2, 1, 4, 4, 4)).square().mean().backward()
            optimizer.step()
        return net.weight.detach().clone()

    assert torch.equal(train(), train())


def test_autocast_is_a_no_op_on_cpu():
    with torch_utils.autocast("cpu", enabled=True):
        out = torch.nn.Linear(3, 3)(torch.randn(2, 3))
    assert out.dtype == torch.float32


def test_checkpoint_round_trip(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    path = torch_utils.save_checkpoint(tmp_path / "run" / "last.pt", epoch=4, net=net.state_dict(),
                                       optimizer=optimizer.state_dict(), history={"loss": [0.5, 0.25]})
    state = torch_utils.load_checkpoint(path)
    assert state["epoch"] == 4 and state["history"]["loss"] == [0.5, 0.25]
    assert torch.equal(state["net"]["weight"], net.weight.detach())
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = torch_utils.save_checkpoint(tmp_path / "last.pt", epoch=1)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        torch_utils.save_checkpoint(path, epoch=2)
    monkeypatch.undo()
    assert torch_utils.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_missing_checkpoint_names_file(tmp_path):
    with pytest.raises(torch_utils.CheckpointError, match="no checkpoint there") as caught:
        torch_utils.load_checkpoint(tmp_path / "nothing.pt")
    assert "nothing.pt" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_load_corrupt_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(torch_utils.CheckpointError, match="delete it"):
        torch_utils.load_checkpoint(path)


class _Custom:
    """A class a weights-only load must refuse to rebuild."""


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"object": _Custom()}, path)
    with pytest.raises(torch_utils.CheckpointError):
        torch_utils.load_checkpoint(path)


def test_labkit_import_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, labkit, labkit.exercises; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_run_checkpoint_keeps_the_last_and_the_best_epoch(tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    checkpoint = torch_utils.Checkpoint(net, optimizer=optimizer)
    assert checkpoint.restore(tmp_path) is None and checkpoint.load_best(tmp_path) is False
    best = {name: value.clone() for name, value in net.state_dict().items()}
    checkpoint.save(tmp_path, 1, best=True)
    with torch.no_grad():
        net.weight.add_(1.0)
    checkpoint.save(tmp_path, 2, best=False)
    last = {name: value.clone() for name, value in net.state_dict().items()}
    checkpoint.save(None, 3, best=True)  # another process of a multi-process run: writes nothing

    with torch.no_grad():
        net.weight.zero_()
    assert checkpoint.restore(tmp_path) == 2
    assert all(torch.equal(net.state_dict()[name], value) for name, value in last.items())
    assert checkpoint.load_best(tmp_path) is True
    assert all(torch.equal(net.state_dict()[name], value) for name, value in best.items())
    checkpoint.clear(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_network_says_what_to_do(tmp_path):
    torch_utils.Checkpoint(torch.nn.Linear(3, 2)).save(tmp_path, 1, best=False)
    with pytest.raises(torch_utils.CheckpointError, match="does not fit this network.*another run name"):
        torch_utils.Checkpoint(torch.nn.Linear(4, 2)).restore(tmp_path)
