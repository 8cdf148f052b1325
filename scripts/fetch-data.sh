#!/usr/bin/env bash
# Download the public Fruits-360 dataset (100x100 release) into DEST as DEST/{Training,Test}/<class>/*.jpg.
# Needs internet; the tests never call this.
set -euo pipefail
DEST=${1:?usage: fetch-data.sh DEST}
URL=${FRUITS360_URL:-https://github.com/fruits-360/fruits-360-100x100/archive/refs/heads/main.tar.gz}
if [ -d "$DEST/Training" ] && [ -d "$DEST/Test" ]; then
  echo "data: $DEST already has Training/ and Test/"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "data: downloading $URL"
curl -fL --retry 3 -o "$tmp/fruits.tar.gz" "$URL"
mkdir -p "$DEST"
tar -xzf "$tmp/fruits.tar.gz" -C "$tmp"
src=$(dirname "$(find "$tmp" -maxdepth 3 -type d -name Training | head -1)")
mv "$src/Training" "$src/Test" "$DEST/"
echo "data: $(find "$DEST" -type f | wc -l) images in $DEST"
