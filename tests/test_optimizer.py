"""The training run's Adam: fused on the CPU, the same update as torch's default, and resumed with its kernel."""

from __future__ import annotations

import pytest
import torch

from inference.svi import train
from inference.training.optimizer import load_state, make_adam
from pyro_vae import checkpoint
from pyro_vae.config import ModelConfig, TrainConfig

CPU = torch.device("cpu")


def _has_fused_cpu_adam() -> bool:
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _twin_parameters(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(seed)
    first = [torch.randn(30, 20, requires_grad=True), torch.randn(20, requires_grad=True)]
    return first, [p.detach().clone().requires_grad_() for p in first]


def _steps(optims, params, count: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        grads = [torch.randn(p.shape, generator=generator) for p in params[0]]
        for optim, ps in zip(optims, params):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            optim.step()


def test_cpu_adam_is_fused_where_torch_has_the_kernel_and_makes_the_default_update():
    fused_params, default_params = _twin_parameters()
    fused = make_adam(fused_params, CPU, 1e-3, eps=1e-4)
    default = torch.optim.Adam(default_params, lr=1e-3, eps=1e-4)
    assert bool(fused.param_groups[0]["fused"]) == _has_fused_cpu_adam()
    _steps([fused, default], [fused_params, default_params], 50)
    for a, b in zip(fused_params, default_params):
        assert not torch.equal(a, a.new_zeros(a.shape))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_fused, p_default in zip(fused_params, default_params):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fused.state[p_fused][key], default.state[p_default][key], rtol=1e-5, atol=1e-7)


def test_a_state_written_by_another_kernel_loads_with_this_runs_kernel_and_its_moments():
    written_params, loading_params = _twin_parameters()
    written = torch.optim.Adam(written_params, lr=1e-3, foreach=False)  # an older run's: no fused flag set
    _steps([written], [written_params], 5)
    loading = make_adam(loading_params, CPU, 1e-3)
    kernel = {flag: loading.param_groups[0][flag] for flag in ("fused", "foreach")}
    load_state(loading, written.state_dict())
    assert {flag: loading.param_groups[0][flag] for flag in ("fused", "foreach")} == kernel
    for p_written, p_loading in zip(written_params, loading_params):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(written.state[p_written][key], loading.state[p_loading][key])
        assert loading.state[p_loading]["step"].device == CPU
    loading_params[0].grad = torch.ones_like(loading_params[0])
    loading_params[1].grad = torch.ones_like(loading_params[1])
    loading.step()  # the loaded state runs under this kernel
    assert float(loading.state[loading_params[0]]["step"]) == 6.0


@pytest.mark.skipif(not _has_fused_cpu_adam(), reason="this torch has no fused Adam on the CPU")
def test_a_run_trains_and_checkpoints_with_the_fused_kernel_and_resumes_an_unfused_checkpoint(mnist_root, tmp_path):
    config = TrainConfig(model=ModelConfig(z_dim=4, hidden_dims=(16,)), preset=None, data_dir=str(mnist_root),
                         train_limit=128, test_limit=64, epochs=1, batch_size=64, device="cpu", out=str(tmp_path / "r"))
    train(config, progress=False)
    path = tmp_path / "r" / "checkpoint.pt"
    saved = checkpoint.read(path, map_location="cpu")
    assert all(group["fused"] for group in saved["optim_state"]["param_groups"])
    for group in saved["optim_state"]["param_groups"]:  # as a checkpoint of the code before the fused kernel
        group["fused"] = None
    torch.save(saved, path)
    resumed = train(TrainConfig(**{**config.__dict__, "epochs": 2}), resume=True, progress=False)
    assert len(resumed.history) == 2
    assert all(group["fused"] for group in checkpoint.read(path, map_location="cpu")["optim_state"]["param_groups"])
