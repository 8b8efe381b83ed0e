#!/usr/bin/env bash
# Idempotent installer of Fashion-MNIST's IDX files: Debian's dataset-fashion-mnist package (apt) puts them
# under /usr/share/datasets/fashion-mnist/ (60,000 train + 10,000 test, MIT licence). Run as root or with sudo.
set -euo pipefail
SRC=/usr/share/datasets/fashion-mnist
if [ ! -f "$SRC/train-images-idx3-ubyte.gz" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist
fi
ls "$SRC"
