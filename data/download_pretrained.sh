#!/bin/sh
# Download a backbone's ImageNet weights, as the original suite's model zoo published them, and unpack them.
#
#   cd data/ && sh download_pretrained.sh ResNet50
#   python train_elem.py --model=ResNet50 --pretrained_model=data/pretrained/ResNet50_pretrained ...
#
# The tar holds one file per variable in Fluid's format (ResNet50_pretrained/conv1_weights, ...), which
# --pretrained_model reads by name; the classifier of ImageNet's 1000 classes is simply not loaded.
#
# Environment:
#   PRETRAINED_URL              address(es) to try, space separated; default: the original's model zoo,
#                               http://paddle-imagenet-models-name.bj.bcebos.com/<MODEL>_pretrained.tar
#   PRETRAINED_DIR              where the tar and <MODEL>_pretrained/ go; default: pretrained/ beside this script
#   PRETRAINED_CONNECT_TIMEOUT  seconds to wait for a server to answer; default: 15
#
# A tar that is already there and lists cleanly is not downloaded again; an interrupted download resumes from its
# .part file. The tar is unpacked into a scratch directory and renamed at the end, so an existing
# <MODEL>_pretrained/ is always complete.
set -eu

[ $# -eq 1 ] || { echo "usage: sh $(basename "$0") MODEL   (ResNet50, ResNet101, SE_ResNeXt50_32x4d, ...)" >&2; exit 2; }
MODEL=$1
NAME=${MODEL}_pretrained
PRETRAINED_URL=${PRETRAINED_URL:-"http://paddle-imagenet-models-name.bj.bcebos.com/$NAME.tar"}
PRETRAINED_DIR=${PRETRAINED_DIR:-$(dirname "$0")/pretrained}
FETCH_CONNECT_TIMEOUT=${PRETRAINED_CONNECT_TIMEOUT:-15}
. "$(dirname "$0")/fetch.sh"

command -v tar >/dev/null 2>&1 || fail "tar is not installed"
mkdir -p "$PRETRAINED_DIR" && cd "$PRETRAINED_DIR" || fail "cannot enter $PRETRAINED_DIR"

if [ -d "$NAME" ]; then
    echo "$(pwd)/$NAME is already there: nothing to do"
    exit 0
fi

tar_complete() {
    tar -tf "$1"
}

# shellcheck disable=SC2086  # PRETRAINED_URL is a list of addresses
download_complete "$NAME.tar" tar_complete $PRETRAINED_URL || fail "could not download a complete $NAME.tar from: \
$PRETRAINED_URL
Is the network reachable, and does the model zoo publish $MODEL? Set PRETRAINED_URL to a mirror, or download the tar
by hand into $(pwd)."

echo "Unpacking $NAME.tar"
rm -rf "$NAME.unpacking"
mkdir "$NAME.unpacking"
tar -xf "$NAME.tar" -C "$NAME.unpacking" || fail "unpacking $NAME.tar failed"
[ -d "$NAME.unpacking/$NAME" ] || fail "$NAME.tar holds no $NAME/ folder"
mv "$NAME.unpacking/$NAME" "$NAME"
rm -rf "$NAME.unpacking"
echo "$MODEL's ImageNet weights are ready: --pretrained_model=$(pwd)/$NAME"
