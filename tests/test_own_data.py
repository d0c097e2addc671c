"""Your own images: folders and arrays of any size, grey or colour, from the command line and from Python.

Every data set here is generated in the test's own folder: small PNGs (grey
and RGB, flat and by class), an ``.npz`` with its own test split, an ``.npy``
split by ``--test-fraction``. Each trains one epoch from the CLI with the MLP
and the conv nets and is evaluated to a finite report; bad inputs get one
``error:`` line and leave nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import evaluate as evaluate_module
from inference import svi
from inference.evaluate import evaluate
from models.vae import VAE
from pyro_vae import checkpoint, figures
from pyro_vae.config import LEVELS_LIKELIHOOD, ModelConfig, TrainConfig
from pyro_vae.data import DataSplits, load_splits
from pyro_vae.nets import conv_halvings
from pyro_vae.sources import SourceOptions

from test_bad_input import assert_refused, hashes, run

TINY = ["--epochs", "1", "--latent-dim", "4", "--hidden-dims", "32", "--batch-size", "16", "--device", "cpu",
        "--no-progress"]


def _blobs(n: int, side: int, channels: int, seed: int) -> torch.Tensor:
    """``n`` uint8 images ``[n, C, side, side]``: a bright square at a random place on a dark ground, per channel."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.full((n, channels, side, side), 20, dtype=torch.uint8)
    for i in range(n):
        r, c = torch.randint(0, side // 2, (2,), generator=gen).tolist()
        for ch in range(channels):
            images[i, ch, r: r + side // 2, c: c + side // 2] = int(torch.randint(120, 256, (), generator=gen))
    return images


def write_folder(root: Path, side: int = 16, channels: int = 1, per_class: int = 24, classes=("a", "b")) -> Path:
    """A folder of PNGs, one sub-folder per class (or flat with ``classes=None``)."""
    from PIL import Image

    for k, name in enumerate(classes or [None]):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(_blobs(per_class, side, channels, seed=k)):
            pixels = image[0].numpy() if channels == 1 else image.permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def _train_and_report(tmp_path: Path, dataset: str, *flags: str) -> tuple[dict, dict]:
    """Train one epoch from the CLI, evaluate from the CLI; ``(config.json, report.json)``."""
    out = tmp_path / "run"
    assert svi.main(["--dataset", dataset, "--out", str(out), *TINY, *flags]) == 0
    assert evaluate_module.main([str(out), "--num-samples", "20", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    assert math.isfinite(report["log_px"]["mean"]) and math.isfinite(report["elbo"]["mean"])
    return config, report


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_folder_of_pngs_by_class_trains_and_evaluates(tmp_path, arch, channels):
    root = write_folder(tmp_path / "images", side=16, channels=channels)
    config, report = _train_and_report(tmp_path, f"folder:{root}", "--arch", arch)
    assert config["model"]["image_shape"] == [channels, 16, 16] and config["model"]["x_dim"] == channels * 256
    # grey gets the Bernoulli on dynamically binarised pixels; colour a density on grey levels
    expected = ("bernoulli", "dynamic") if channels == 1 else (LEVELS_LIKELIHOOD, "none")
    assert (config["model"]["likelihood"], config["binarize"]) == expected
    assert report["n_images"] == 5  # round(0.1 * 48) held out
    assert report["bits_per_dim"] == pytest.approx(-report["log_px"]["mean"] / (channels * 256 * math.log(2)))
    grid = (tmp_path / "run" / "figures" / "samples.png")
    from PIL import Image

    with Image.open(grid) as image:
        assert image.mode == "RGB" and image.size[0] == 8 * 16 + 9 * 2  # 8 images of 16 a row, padding 2
    assert (tmp_path / "run" / "figures" / "latent.png").exists()


def test_an_npz_with_its_own_test_split_and_an_npy_split_by_fraction(tmp_path):
    images = _blobs(60, 12, 3, seed=1).permute(0, 2, 3, 1).numpy()  # [N, H, W, C] uint8
    test = _blobs(10, 12, 3, seed=2).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "set.npz", images=images, labels=np.arange(60) % 4, test_images=test,
             test_labels=np.arange(10) % 4)
    config, report = _train_and_report(tmp_path / "a", f"array:{tmp_path / 'set.npz'}", "--image-size", "8",
                                       "--channels", "1", "--likelihood", "bernoulli", "--binarize", "dynamic")
    assert config["model"]["image_shape"] == [1, 8, 8] and report["n_images"] == 10

    floats = _blobs(40, 8, 1, seed=3)[:, 0].float().numpy() / 255  # [N, H, W] floats in [0, 1]
    np.save(tmp_path / "set.npy", floats)
    config, report = _train_and_report(tmp_path / "b", f"array:{tmp_path / 'set.npy'}", "--test-fraction", "0.25",
                                       "--arch", "conv")
    assert config["model"]["image_shape"] == [1, 8, 8] and report["n_images"] == 10
    assert (config["test_fraction"], config["split_seed"]) == (0.25, 0)


def test_channels_first_arrays_and_the_held_out_split_is_seeded_and_disjoint():
    x = _blobs(30, 8, 3, seed=4)
    split = DataSplits.from_arrays(x.numpy(), labels=np.arange(30), options=SourceOptions(channels_first=True),
                                   binarize="none")
    assert split.image_shape == (3, 8, 8) and split.test.shape == (3, 192) and len(split.train) == 27
    again = DataSplits.from_arrays(x.numpy(), labels=np.arange(30), options=SourceOptions(channels_first=True),
                                   binarize="none")
    other = DataSplits.from_arrays(x.numpy(), labels=np.arange(30),
                                   options=SourceOptions(channels_first=True, split_seed=1), binarize="none")
    assert torch.equal(split.test_labels, again.test_labels) and not torch.equal(split.test_labels, other.test_labels)
    assert split.test_labels.tolist() == sorted(split.test_labels.tolist())  # kept in file order
    channel_major = x.flatten(1).float() / 255  # row i: all of channel 0, then 1, then 2
    assert torch.equal(split.test, channel_major[split.test_labels])


def test_python_entry_trains_on_arrays(tmp_path):
    data = DataSplits.from_arrays(_blobs(40, 8, 1, seed=5)[:, 0].numpy(), binarize="dynamic")
    config = TrainConfig(model=ModelConfig(z_dim=3, hidden_dims=(16,)), preset=None, epochs=1, batch_size=10,
                         device="cpu", out=str(tmp_path / "run"))
    result = svi.train(config, data=data, progress=False)
    assert result.config.model.x_dim == 64 and result.config.model.image_shape == (1, 8, 8)
    model, saved = checkpoint.load(tmp_path / "run", device="cpu")
    assert saved.model.image_shape == (1, 8, 8) and saved.dataset == "custom"
    report = evaluate(tmp_path / "run", num_samples=10, images=data.test, progress=False)
    assert math.isfinite(report["log_px"]["mean"])


def test_a_streamed_folder_trains_exactly_as_the_held_one(tmp_path):
    """--memory-budget 0 streams the training files through a DataLoader; batches, and so the trained
    parameters, are the same as with the folder held in memory."""
    root = write_folder(tmp_path / "images", side=8, channels=1, per_class=30)
    held = load_splits(f"folder:{root}", memory_budget=None)
    streamed = load_splits(f"folder:{root}", memory_budget=0, workers=2)
    assert type(streamed.train).__name__ == "StreamedImages" and torch.equal(held.test, streamed.test)
    for epoch in (0, 3):
        pairs = zip(held.train.batches(7, epoch, start_step=1), streamed.train.batches(7, epoch, start_step=1))
        assert all(torch.equal(a, b) for a, b in pairs)
    states = []
    for budget in ("1000", "0"):
        out = tmp_path / f"run{budget}"
        assert svi.main(["--dataset", f"folder:{root}", "--out", str(out), *TINY, "--memory-budget", budget]) == 0
        states.append(torch.load(out / "checkpoint.pt", weights_only=True)["model_state"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("side,halvings", [(28, 2), (32, 3), (64, 4), (8, 1), (20, 2), (10, 1)])
def test_conv_nets_take_any_square_side_and_channels(side, halvings):
    assert conv_halvings(side) == halvings
    for channels in (1, 3):
        shape = (channels, side, side)
        model = VAE(x_dim=math.prod(shape), z_dim=5, arch="conv", image_shape=shape, likelihood="gaussian-learned")
        x = torch.rand(4, math.prod(shape))
        assert model.encoder(x).shape == (4, 10)
        assert model.decoder(torch.randn(2, 4, 5)).shape == (2, 4, 2 * math.prod(shape))


def test_the_28x28_conv_net_is_the_one_older_checkpoints_hold():
    """Checkpoints written before image shapes were recorded load into the same layers (names and shapes)."""
    shapes = {k: tuple(v.shape) for k, v in VAE(z_dim=50, arch="conv").state_dict().items() if "net" in k}
    assert shapes == {
        "encoder.net.0.weight": (32, 1, 4, 4), "encoder.net.0.bias": (32,),
        "encoder.net.2.weight": (64, 32, 4, 4), "encoder.net.2.bias": (64,),
        "encoder.net.5.weight": (100, 64 * 7 * 7), "encoder.net.5.bias": (100,),
        "decoder.net.0.weight": (64 * 7 * 7, 50), "decoder.net.0.bias": (64 * 7 * 7,),
        "decoder.net.3.weight": (64, 32, 4, 4), "decoder.net.3.bias": (32,),
        "decoder.net.5.weight": (32, 1, 4, 4), "decoder.net.5.bias": (1,),
    }


def test_square_image_shapes_are_read_from_the_pixel_count():
    assert figures.square_image_shape(784) == (1, 28, 28)
    assert figures.square_image_shape(3 * 32 * 32) == (3, 32, 32)
    assert figures.square_image_shape(3 * 28 * 20) is None


def test_kmnist_reads_its_own_idx_files(tmp_path):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 12), ("t10k", 5)):
        pixels = _blobs(n, 28, 1, seed=n)[:, 0].numpy()
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], ">u1").tobytes() + np.array([n, 28, 28], ">i4").tobytes() + pixels.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], ">u1").tobytes() + np.array([n], ">i4").tobytes() + (np.arange(n) % 10).astype(
                np.uint8).tobytes())
    splits = load_splits("kmnist", data_dir=tmp_path, download=False)
    assert len(splits.train) == 12 and splits.test.shape == (5, 784) and splits.test_labels.tolist() == [0, 1, 2, 3, 4]


# --- bad input ------------------------------------------------------------------------------

def _refused(tmp_path: Path, capsys, dataset: str, *words: str, flags=()) -> None:
    out = tmp_path / "run"
    before = hashes(out)
    status, err = run(svi.main, ["--dataset", dataset, "--out", str(out), *TINY, *flags], capsys)
    assert_refused(status, err, *words)
    assert hashes(out) == before


def test_mixed_sizes_need_image_size(tmp_path, capsys):
    root = write_folder(tmp_path / "images", side=16, classes=("a",))
    write_folder(tmp_path / "images", side=12, classes=("b",))
    _refused(tmp_path, capsys, f"folder:{root}", "differ in size", "--image-size")
    assert svi.main(["--dataset", f"folder:{root}", "--out", str(tmp_path / "ok"), *TINY, "--image-size", "10"]) == 0


@pytest.mark.parametrize("case", ["empty", "not an image", "not decodable", "files and folders"])
def test_bad_folders_are_one_line(tmp_path, capsys, case):
    root = tmp_path / "images"
    root.mkdir()
    if case != "empty":
        write_folder(root, classes=None if case != "files and folders" else ("a",))
    if case == "not an image":
        (root / "notes.txt").write_text("hello")
    if case == "not decodable":
        (root / "broken.png").write_bytes(b"\x89PNG not really")
    if case == "files and folders":
        (root / "stray.png").write_bytes((root / "a" / "000.png").read_bytes())
    words = {"empty": ["holds no images"], "not an image": ["notes.txt", "not an image"],
             "not decodable": ["broken.png", "cannot be read"], "files and folders": ["both files"]}[case]
    _refused(tmp_path, capsys, f"folder:{root}", *words)


@pytest.mark.parametrize("case", ["rank", "range", "nan", "dtype", "last axis", "pickled", "keys"])
def test_bad_arrays_are_one_line(tmp_path, capsys, case):
    path = tmp_path / ("set.npz" if case == "keys" else "set.npy")
    arrays = {"rank": np.zeros((10, 64), np.uint8), "range": np.full((10, 8, 8), 2.0),
              "nan": np.full((10, 8, 8), np.nan), "dtype": np.zeros((10, 8, 8), np.int64),
              "last axis": np.zeros((10, 3, 8, 8), np.uint8), "pickled": np.array([{"a": 1}] * 10, dtype=object)}
    if case == "keys":
        np.savez(path, pictures=np.zeros((10, 8, 8), np.uint8))
    else:
        np.save(path, arrays[case], allow_pickle=case == "pickled")
    words = {"rank": ["[N, H, W]"], "range": ["[0, 1]"], "nan": ["NaN"], "dtype": ["uint8"],
             "last axis": ["--channels-first"], "pickled": ["cannot be read"], "keys": ["'images'"]}[case]
    _refused(tmp_path, capsys, f"array:{path}", *words)


def test_an_unknown_dataset_spec_is_refused_by_the_parser(tmp_path, capsys):
    status, err = run(svi.main, ["--dataset", "cifar10", "--out", str(tmp_path / "run"), *TINY], capsys)
    assert status == 2 and "unknown dataset 'cifar10'" in err and "folder:PATH" in err


def test_sixteen_bit_grey_pngs_keep_their_levels(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)  # 0 .. 64,512 of 65,535
    for i in range(10):
        Image.fromarray(ramp).save(root / f"{i}.png")
    grey = load_splits(f"folder:{root}", binarize="none").test[0] * 255
    assert torch.equal(grey.round().long(), torch.from_numpy(ramp.reshape(-1).astype(np.int64) >> 8))


def test_a_run_on_colour_train_and_grey_test_folders_is_evaluated_in_colour(tmp_path):
    """The report reads the test folder again with the channels the model was trained on."""
    root = tmp_path / "images"
    write_folder(root / "train", side=8, channels=3, classes=("a", "b"))
    write_folder(root / "test", side=8, channels=1, per_class=5, classes=("a", "b"))
    config, report = _train_and_report(tmp_path, f"folder:{root}")
    assert config["model"]["image_shape"] == [3, 8, 8] and report["n_images"] == 10


def test_a_file_that_fails_only_when_streamed_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "images", side=8, classes=None, per_class=40)
    good = (root / "000.png").read_bytes()
    (root / "001.png").write_bytes(good[: len(good) // 2])  # a header that opens, pixels that do not decode
    out = tmp_path / "run"
    status, err = run(svi.main, ["--dataset", f"folder:{root}", "--out", str(out), *TINY, "--memory-budget", "0",
                                 "--split-seed", "3"], capsys)
    assert_refused(status, err, "001.png", "cannot be read")


def test_images_that_are_not_square_are_drawn_in_their_own_shape(tmp_path):
    images = _blobs(30, 8, 1, seed=6).repeat(1, 1, 1, 4)  # [N, 1, 8, 32]: 256 pixels, which is also 16 x 16
    data = DataSplits.from_arrays(images[:, 0].numpy(), binarize="dynamic")
    assert data.image_shape == (1, 8, 32)
    config = TrainConfig(model=ModelConfig(z_dim=2, hidden_dims=(16,)), preset=None, epochs=1, batch_size=9,
                         device="cpu", out=str(tmp_path / "run"))
    svi.train(config, data=data, progress=False)
    from PIL import Image

    with Image.open(tmp_path / "run" / "figures" / "samples.png") as grid:
        assert grid.size == (8 * 32 + 9 * 2, 8 * 8 + 9 * 2)  # 8 a row of 8 x 32 images, not 16 x 16 squares


def test_a_folder_that_changed_since_training_is_refused_by_the_report_and_resume(tmp_path, capsys):
    """The held-out split depends on the number of images: with one more file it would be other images."""
    root = write_folder(tmp_path / "images", side=8, classes=None, per_class=30)
    out = tmp_path / "run"
    assert svi.main(["--dataset", f"folder:{root}", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["held_out_from"] == 30
    (root / "extra.png").write_bytes((root / "000.png").read_bytes())
    before = hashes(out)
    status, err = run(evaluate_module.main, [str(out), "--num-samples", "5", "--no-progress"], capsys)
    assert_refused(status, err, "now holds 31 images", "out of 30")
    status, err = run(svi.main, ["--resume", "--out", str(out), "--epochs", "2", "--no-progress"], capsys)
    assert_refused(status, err, "now holds 31 images")
    assert hashes(out) == before


def test_class_folder_names_label_the_latent_map(tmp_path):
    root = write_folder(tmp_path / "images", side=8, classes=("cats", "dogs"), per_class=10)
    splits = load_splits(f"folder:{root}")
    assert splits.classes == ("cats", "dogs") and set(splits.test_labels.tolist()) <= {0, 1}
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    figures.draw_latent(ax, torch.randn(len(splits.test), 2), splits.test_labels, names=splits.classes)
    shown = [t.get_text() for t in ax.get_legend().get_texts()]
    assert shown and set(shown) <= {"cats", "dogs"}
