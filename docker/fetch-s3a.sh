#!/usr/bin/env bash
# Build step of the s3a stage: download Maven artifacts and verify them.
#   fetch-s3a.sh DEST REPO PATH1 SHA256_1 [PATH2 SHA256_2 ...]
# Each jar must match the SHA-1 published beside it on the repository; when SHA256_n is not empty it
# must match that too (the pin kept in this repository, the stronger check).
set -euo pipefail
dest=$1 repo=$2
shift 2
get() { if command -v curl >/dev/null; then curl -fsSL --retry 3 -o "$2" "$1"; else wget -q -O "$2" "$1"; fi; }
while [ $# -ge 2 ]; do
  path=$1 sha256=$2
  shift 2
  file="$dest/$(basename "$path")"
  get "$repo/$path" "$file"
  get "$repo/$path.sha1" "$file.sha1"
  echo "$(cut -c1-40 "$file.sha1")  $file" | sha1sum -c -
  rm -f "$file.sha1"
  if [ -n "$sha256" ]; then echo "$sha256  $file" | sha256sum -c -; else echo "s3a: $(sha256sum "$file")  (no SHA-256 pin given)"; fi
done
chmod 0644 "$dest"/*.jar
