"""Pictures of what a VAE learned: latent codes, interpolations, the manifold, the curves, and the figures CLI."""

from __future__ import annotations

import hashlib
import json
import math

import pyro
import pytest
import torch
from matplotlib.figure import Figure
from pyro.infer import Trace_ELBO

from inference import figures as run_figures
from inference.figures import draw_run_figures, interpolate, interpolation_pairs, latent_codes, manifold
from inference.reports.figures import prior_quantile_grid
from inference.estimators.rate_distortion import rate_distortion
from inference.svi import train
from models import VAE
from pyro_vae import checkpoint
from pyro_vae.config import ModelConfig, TrainConfig
from pyro_vae.data import load_labels, load_pixels
from pyro_vae.errors import DataError
from pyro_vae.figures import _readable_ylim, elbo_figure, latent_plane, plot_elbo_curve

PNG = b"\x89PNG\r\n\x1a\n"


def small_vae(z_dim: int = 2) -> VAE:
    return VAE(z_dim=z_dim, hidden_dims=(32,))


def test_prior_quantile_grid_is_symmetric_and_laid_out_like_the_latent_map():
    side = 5
    grid = prior_quantile_grid(side).reshape(side, side, 2)
    q = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(side) + 0.5) / side)
    assert torch.allclose(grid[0, :, 0], q) and torch.allclose(grid[:, 0, 1], q.flip(0))  # z1 right, z2 up
    assert torch.allclose(grid[side // 2, side // 2], torch.zeros(2), atol=1e-6)


def test_interpolation_starts_and_ends_at_the_reconstructions():
    vae = small_vae(3).eval()
    x = torch.bernoulli(torch.rand(4, 784, generator=torch.Generator().manual_seed(0)))
    rows = interpolate(vae, x[:2], x[2:], steps=5)
    assert rows.shape == (2, 7, 784)
    assert torch.equal(rows[:, 0], x[:2]) and torch.equal(rows[:, -1], x[2:])
    assert torch.allclose(rows[:, 1], vae.reconstruct(x[:2])) and torch.allclose(rows[:, -2], vae.reconstruct(x[2:]))
    middle = vae.decode((vae.encode(x[:2]) + vae.encode(x[2:])) / 2)
    assert torch.allclose(interpolate(vae, x[:2], x[2:], steps=3)[:, 2], middle, atol=1e-6)


def test_interpolation_pairs_join_images_of_different_labels():
    labels = torch.tensor([3, 3, 3, 1, 3, 7])
    starts, ends = interpolation_pairs(labels, 3, len(labels))
    assert starts == [0, 1, 2] and ends == [3, 3, 3]
    assert all(labels[a] != labels[b] for a, b in zip(starts, ends))


def test_latent_plane_is_the_codes_in_2d_and_the_top_principal_plane_above():
    codes = torch.randn(200, 2)
    points, share = latent_plane(codes)
    assert share is None and torch.allclose(points.float(), codes)
    basis = torch.linalg.qr(torch.randn(6, 2))[0]  # codes on a 2-D plane inside 6-D: the plane holds all variance
    flat = torch.randn(300, 2) * torch.tensor([3.0, 1.0]) @ basis.T + 5
    points, share = latent_plane(flat)
    assert share == pytest.approx(1.0, abs=1e-9)
    assert points.var(0).sum().item() == pytest.approx(flat.double().var(0).sum().item(), rel=1e-6)


def test_long_elbo_curves_fit_the_axis_to_the_later_epochs():
    ax = Figure().subplots()
    values = [-200.0] + [-100.0 + e * 0.01 for e in range(1, 150)]
    assert _readable_ylim(ax, [values]) == 1  # epoch 1 lies below the axis, all the others on it
    low, high = ax.get_ylim()
    assert low > -101 and high < -98
    assert _readable_ylim(Figure().subplots(), [values[:5]]) == 0  # short runs keep their full range


def test_elbo_curve_draws_rate_and_distortion_when_recorded(tmp_path):
    history = [{"epoch": e, "train_elbo": -100 - 50 / e, "test_elbo": -99 - 50 / e, "test_rate": 20 - 5 / e,
                "test_distortion": 79 + 55 / e} for e in range(1, 151)]
    plot_elbo_curve(history, tmp_path / "with.png")
    plot_elbo_curve([{k: h[k] for k in ("epoch", "train_elbo", "test_elbo")} for h in history], tmp_path / "without.png")
    from matplotlib.image import imread

    assert imread(tmp_path / "with.png").shape[1] > 1.5 * imread(tmp_path / "without.png").shape[1]  # two panels


@pytest.mark.parametrize("epochs", [1, 3])
@pytest.mark.parametrize("terms", [False, True])
def test_elbo_curve_of_a_short_run_marks_whole_epochs(epochs, terms):
    history = [{"epoch": e, "train_elbo": -100 - 50 / e, "test_elbo": -99 - 50 / e,
                **({"test_rate": 20 - 5 / e, "test_distortion": 79 + 55 / e} if terms else {})}
               for e in range(1, epochs + 1)]
    fig = elbo_figure(history)
    epoch_axes = [ax for ax in fig.axes if ax.get_xlabel().startswith("epoch")]
    assert len(epoch_axes) == (2 if terms else 1)
    for ax in epoch_axes:
        low, high = ax.get_xlim()
        labels = [t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
        assert labels == [str(e) for e in range(1, epochs + 1)]  # 1, 2, 3: not 1.0, 1.2, 1.4, ...


def test_rate_and_distortion_split_the_trace_elbo_on_the_same_draws():
    vae = small_vae(4)
    x = torch.bernoulli(torch.rand(300, 784, generator=torch.Generator().manual_seed(1)))
    terms = rate_distortion(vae.model, vae.guide, x, seed=7, batch_size=128)
    torch.manual_seed(7)
    loss = sum(Trace_ELBO().loss(vae.model, vae.guide, xb) for xb in x.split(128))
    assert terms.elbo.sum().item() == pytest.approx(-loss, rel=1e-5)
    # the one-sample rate is unbiased for the closed-form KL of the diagonal Gaussian guide
    with torch.no_grad():
        q = vae.posterior(x)
        kl = torch.distributions.kl_divergence(q, vae.prior(x)).double()
    se = (terms.rate - kl).std() / math.sqrt(len(x))
    assert abs((terms.rate - kl).mean()) < 4 * se
    assert torch.allclose(terms.distortion, -terms.elbo - terms.rate)


def test_rate_distortion_leaves_the_callers_random_stream_alone():
    vae = small_vae()
    x = torch.bernoulli(torch.rand(10, 784))
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    rate_distortion(vae.model, vae.guide, x)
    assert torch.equal(torch.rand(1), expected)


def test_mnist_labels_line_up_with_the_images(mnist_root):
    labels, images = load_labels("mnist", False, mnist_root), load_pixels("mnist", False, mnist_root)
    assert labels.shape == (len(images),) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))
    # a digit 1 has far fewer ink pixels than a digit 0, on average: the labels belong to these images
    ink = (images > 127).sum(1).double()
    assert ink[labels == 1].mean() < 0.6 * ink[labels == 0].mean()


def test_a_damaged_label_file_is_named(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").iterdir():
        (raw / f.name).symlink_to(f)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01garbage")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is unreadable"):
        load_labels("mnist", False, tmp_path)


@pytest.fixture(scope="module")
def two_d_run(mnist_root, tmp_path_factory):
    """A VAE with z_dim 2 trained briefly on real MNIST."""
    out = tmp_path_factory.mktemp("figs") / "run"
    pyro.clear_param_store()
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(64,)), preset=None, data_dir=str(mnist_root),
                         train_limit=1000, test_limit=300, epochs=2, device="cpu", out=str(out))
    result = train(config, progress=False)
    return out, result


def test_training_draws_the_latent_space_coloured_by_label(two_d_run):
    out, result = two_d_run
    for name in run_figures.FIGURE_FILES:
        assert (out / "figures" / name).read_bytes().startswith(PNG), name
    assert result.data.test_labels.tolist() == load_labels("mnist", False, result.config.data_dir)[:300].tolist()
    codes = latent_codes(result.model, result.data.test)
    assert codes.shape == (300, 2) and torch.isfinite(codes).all()
    assert manifold(result.model, side=4).shape == (16, 784)


def test_figures_cli_redraws_a_run_and_leaves_other_files_alone(two_d_run, tmp_path):
    out, _ = two_d_run
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    assert run_figures.main([str(out), "--out", str(tmp_path / "f"), "--test-limit", "100", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir() if p.name != ".lock") == sorted(run_figures.FIGURE_FILES)
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}


def test_a_model_without_a_2d_latent_space_gets_no_manifold(tmp_path):
    vae = small_vae(5)
    (tmp_path / "manifold.png").write_bytes(b"stale")
    x = torch.bernoulli(torch.rand(20, 784))
    written = draw_run_figures(vae, x, None, [], tmp_path)
    assert {p.name for p in written} == {"samples.png", "reconstructions.png", "latent.png", "interpolation.png"}
    assert not (tmp_path / "manifold.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--test-limit", "0"], "--test-limit"),
    (["--test-limit", "20000"], "asks for more images"),
    (["--device", "tpu"], "--device"),
])
def test_figures_cli_refuses_bad_flags_in_one_line(two_d_run, tmp_path, capsys, args, message):
    out, _ = two_d_run
    with pytest.raises(SystemExit) as info:
        status = run_figures.main([str(out), "--out", str(tmp_path / "f"), *args])
        raise SystemExit(status)
    stderr = capsys.readouterr().err
    assert info.value.code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "f").exists()


def test_figures_cli_refuses_a_missing_or_damaged_checkpoint(tmp_path, capsys):
    assert run_figures.main([str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert run_figures.main([str(tmp_path / "run")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run" / "figures").exists()


def test_figures_cli_refuses_a_checkpoint_with_a_damaged_history(two_d_run, tmp_path, capsys):
    out, _ = two_d_run
    payload = checkpoint.read(out)
    payload["history"] = [{"epoch": "one"}]
    torch.save(payload, tmp_path / "checkpoint.pt")
    assert run_figures.main([str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "f")]) == 2
    assert "history is damaged" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_metrics_record_rate_and_distortion(two_d_run):
    out, _ = two_d_run
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["test_elbo"] == pytest.approx(-(record["test_rate"] + record["test_distortion"]))
        assert 0 < record["test_rate"] < record["test_distortion"]
