#!/bin/sh
# Download Stanford Online Products (SOP, about 3 GB) and unpack it to Stanford_Online_Products/.
#
#   cd data/ && sh download_sop.sh
#
# Environment:
#   SOP_URL              address(es) to try, space separated; default: the Stanford FTP server, then its HTTP mirror
#   SOP_DATA_DIR         where the zip and Stanford_Online_Products/ go; default: the directory of this script
#   SOP_CONNECT_TIMEOUT  seconds to wait for a server to answer; default: 15
#
# A zip that is already there and passes `unzip -t` is not downloaded again; an interrupted download resumes from
# its .part file. The zip is unpacked into a scratch directory and renamed at the end, so an existing
# Stanford_Online_Products/ is always complete.
set -eu

ZIP_NAME=Stanford_Online_Products.zip
DATA_SET_DIR=Stanford_Online_Products
SOP_URL=${SOP_URL:-"ftp://cs.stanford.edu/cs/cvgl/$ZIP_NAME http://ftp.cs.stanford.edu/cs/cvgl/$ZIP_NAME"}
SOP_DATA_DIR=${SOP_DATA_DIR:-$(dirname "$0")}
SOP_CONNECT_TIMEOUT=${SOP_CONNECT_TIMEOUT:-15}

FETCH_CONNECT_TIMEOUT=$SOP_CONNECT_TIMEOUT
. "$(dirname "$0")/fetch.sh"

command -v unzip >/dev/null 2>&1 || fail "unzip is not installed"
cd "$SOP_DATA_DIR" || fail "cannot enter the data directory $SOP_DATA_DIR"

if [ -d "$DATA_SET_DIR" ]; then
    echo "$SOP_DATA_DIR/$DATA_SET_DIR is already there: nothing to do"
    exit 0
fi

zip_complete() {
    unzip -tq "$1"
}

# shellcheck disable=SC2086  # SOP_URL is a list of addresses
download_complete "$ZIP_NAME" zip_complete $SOP_URL || fail "could not download a complete $ZIP_NAME from: $SOP_URL
Is the network reachable? Set SOP_URL to a mirror, or download the zip by hand into $(pwd)."

echo "Unzipping $ZIP_NAME"
rm -rf "$DATA_SET_DIR.unzipping"
unzip -q "$ZIP_NAME" -d "$DATA_SET_DIR.unzipping" || fail "unzip of $ZIP_NAME failed"
[ -d "$DATA_SET_DIR.unzipping/$DATA_SET_DIR" ] || fail "$ZIP_NAME holds no $DATA_SET_DIR/ folder"
mv "$DATA_SET_DIR.unzipping/$DATA_SET_DIR" "$DATA_SET_DIR"
rm -rf "$DATA_SET_DIR.unzipping"
echo "SOP is ready in $(pwd)/$DATA_SET_DIR"
