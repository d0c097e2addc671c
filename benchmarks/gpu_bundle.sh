#!/usr/bin/env bash
# Build what benchmarks/gpu_check.py needs on an offline GPU node, into OUT_DIR (default gpu_bundle/, ignored by git).
#
#   bash benchmarks/gpu_bundle.sh [OUT_DIR]
#
# Run it here, on a machine with the package index, from the repository root, after `pip install -e ".[test]"`.
# OUT_DIR/wheels/  wheels (Python 3.12, manylinux x86-64) of what such a node lacks, at the versions installed here:
#                  pyro-ppl, pyro-api, arviz and its h5netcdf, xarray-einstats, platformdirs; arviz-stats
# OUT_DIR/data/    MNIST's four IDX files gzipped (torchvision's layout; pyro_vae.data reads *-ubyte.gz)
# OUT_DIR/run/     a default checkpoint trained 10 epochs (or a copy of $GPU_BUNDLE_RUN, a run folder you name)
# OUT_DIR/burda2015_run.tar.gz   only if $GPU_BUNDLE_RESUME names one: the burda2015 run an earlier node brought
#                  back, which the check then continues
# Environment: PYRO_VAE_DATA (MNIST's root, as everywhere), GPU_BUNDLE_RUN, GPU_BUNDLE_RESUME.
# Prints the bundle's size: with the repository it must stay under the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_bundle}
data=${PYRO_VAE_DATA:?set PYRO_VAE_DATA to the folder holding MNIST/raw}
mkdir -p "$out/wheels" "$out/data/MNIST/raw"

version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in pyro-ppl pyro-api arviz h5netcdf xarray-einstats platformdirs arviz-stats; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out/wheels" "$package==$(version "$package")"
done

for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -s "$out/data/MNIST/raw/$name.gz" ] || gzip -c "$data/MNIST/raw/$name" > "$out/data/MNIST/raw/$name.gz"
done

if [ -n "${GPU_BUNDLE_RUN:-}" ]; then
  rm -rf "$out/run" && mkdir -p "$out/run"
  cp "$GPU_BUNDLE_RUN/config.json" "$GPU_BUNDLE_RUN/metrics.jsonl" "$GPU_BUNDLE_RUN/checkpoint.pt" "$out/run/"
elif [ ! -s "$out/run/checkpoint.pt" ]; then
  rm -rf "$out/run"
  python -m inference.svi --epochs 10 --out "$out/run" --no-progress
  rm -rf "$out/run/figures" "$out/run/report"
fi
if [ -n "${GPU_BUNDLE_RESUME:-}" ]; then
  cp "$GPU_BUNDLE_RESUME" "$out/burda2015_run.tar.gz"
fi

du -sh "$out"/*
repo=$(git ls-files -z | du --files0-from=- -cb | tail -n 1 | cut -f1)
echo "bundle: $out $(du -sm "$out" | cut -f1) MiB; the repository's tracked files $((repo / 1048576)) MiB (a device call carries both: 64 MiB in all)"
