#!/usr/bin/env bash
# Build the integration-test control-plane binaries from the Go modules pinned
# in tests/cluster/tools/go.mod (and tools/helm/go.mod for helm, tools/node/go.mod
# for the real node's CoreDNS and volume provisioner, tools/kubeflow/go.mod for
# Kubeflow Trainer v2, JobSet and the kstatus helper), once per machine.
#
#   tests/cluster/build.sh            # build if needed; last stdout line = bin dir
#   tests/cluster/build.sh --print    # print the bin dir only, build nothing
#   tests/cluster/build.sh --check    # exit 0 if the bin dir is complete, else 1
#
# Output: ${HELIXRUN_CACHE:-$HOME/.cache/helixrun}/bin/<key>/ where <key> is a
# hash of the go.mod/go.sum files, this script's build recipe and the Go
# version, so a version bump builds into a fresh folder. Idempotent: a
# complete folder (marker file .complete) is reused without invoking go.
#
# Env knobs:
#   HELIXRUN_CACHE        cache root (default ~/.cache/helixrun)
#   HELIXRUN_BUILD_P      go build -p (parallel packages; default: nproc)
#   HELIXRUN_BUILD_HELM   0 to skip helm (default 1)
#   GOCACHE / GOMODCACHE  honoured as usual (share them in CI to go faster)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
mode="${1:-build}"

export GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

# Bump when the recipe below changes in a way that must invalidate old builds.
recipe="v3 trimpath ldflags=-s-w+versions cgo0 helm=${HELIXRUN_BUILD_HELM:-1}"

# Binaries expected in the bin dir (name in bin dir).
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok kwokctl
      training-operator coredns hostpath-provisioner trainer-controller-manager jobset kstatus)
if [[ "${HELIXRUN_BUILD_HELM:-1}" != 0 ]]; then bins+=(helm); fi

key="$(
  {
    cat "$tools/go.mod" "$tools/go.sum" "$tools/helm/go.mod" "$tools/helm/go.sum" \
        "$tools/node/go.mod" "$tools/node/go.sum" "$tools"/node/*/main.go \
        "$tools/kubeflow/go.mod" "$tools/kubeflow/go.sum" "$tools"/kubeflow/*/main.go
    echo "$recipe"
    go env GOVERSION GOOS GOARCH
  } | sha256sum | cut -c1-16
)"
cache="${HELIXRUN_CACHE:-$HOME/.cache/helixrun}"
bindir="$cache/bin/$key"

complete() {
  [[ -f "$bindir/.complete" && -f "$bindir/share/.complete" ]] || return 1
  # Assets added since a bin dir was built are copied in without rebuilding (copy_assets below).
  [[ -f "$bindir/share/trainer/runtimes/torch_distributed.yaml" ]] || return 1
  local b
  for b in "${bins[@]}"; do [[ -x "$bindir/$b" ]] || return 1; done
}

# Data files the harness needs, taken from the same pinned modules (module
# cache) so they always match the binaries: kwok's stock stages, the
# training-operator's CRDs/webhook/kustomize manifests, Trainer v2's and
# JobSet's CRDs and webhook manifests, and Kubernetes' pause.c (the real node
# compiles its sandbox image from it).
moddir() { # $1 = module, $2 = module dir (default: tools)
  (cd "${2:-$tools}" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}
copy_assets() { # $1 = destination bin dir
  local share="$1/share" kwok op k8s trainer jobset
  rm -rf "$share.tmp" && mkdir -p "$share.tmp/kwok" "$share.tmp/training-operator" "$share.tmp/pause" \
    "$share.tmp/trainer" "$share.tmp/jobset"
  kwok="$(moddir sigs.k8s.io/kwok)"
  op="$(moddir github.com/kubeflow/training-operator)"
  k8s="$(moddir k8s.io/kubernetes)"
  trainer="$(moddir github.com/kubeflow/trainer/v2 "$tools/kubeflow")"
  jobset="$(moddir sigs.k8s.io/jobset "$tools/kubeflow")"
  [[ -d "$kwok" && -d "$op" && -d "$k8s" && -d "$trainer" && -d "$jobset" ]] ||
    { echo "build.sh: module sources not found" >&2; return 1; }
  cp -r "$trainer/manifests/base/crds" "$trainer/manifests/base/webhook" "$share.tmp/trainer/"
  mkdir -p "$share.tmp/trainer/runtimes" && cp "$trainer/manifests/base/runtimes/torch_distributed.yaml" "$share.tmp/trainer/runtimes/"
  cp -r "$jobset/config/components/crd/bases" "$share.tmp/jobset/crds"
  cp -r "$jobset/config/components/webhook" "$share.tmp/jobset/webhook"
  cp "$k8s/build/pause/linux/pause.c" "$share.tmp/pause/"
  cp "$kwok/kustomize/stage/node/fast/node-initialize.yaml" \
     "$kwok/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$kwok/kustomize/stage/pod/fast/pod-ready.yaml" \
     "$kwok/kustomize/stage/pod/fast/pod-delete.yaml" "$share.tmp/kwok/"
  cp -r "$op/manifests" "$share.tmp/training-operator/manifests"
  chmod -R u+w "$share.tmp"
  touch "$share.tmp/.complete"
  rm -rf "$share" && mv "$share.tmp" "$share"
}

case "$mode" in
  --print) echo "$bindir"; exit 0 ;;
  --check) complete; exit $? ;;
  build|--build) ;;
  *) echo "usage: $0 [--print|--check]" >&2; exit 2 ;;
esac

if complete; then
  echo "$bindir"
  exit 0
fi

mkdir -p "$cache/bin"
# One builder at a time per machine; others wait and then reuse the result.
exec 9>"$cache/bin/.build.lock"
flock 9
if complete; then
  echo "$bindir"
  exit 0
fi
if [[ -f "$bindir/.complete" ]]; then
  copy_assets "$bindir"
  if complete; then echo "$bindir"; exit 0; fi
fi

p="${HELIXRUN_BUILD_P:-$(nproc)}"
tmp="$(mktemp -d "$cache/bin/.tmp-$key-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$(date +%s)
echo "build.sh: building control-plane binaries into $bindir (go build -p $p)" >&2
modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
(
  cd "$tools"
  # Stamp the Kubernetes version (as the upstream release build does), else
  # every binary reports v0.0.0-master and version-gated clients (helm
  # kubeVersion, kubectl skew checks) misbehave. Versions come from go.mod.
  kv="$(modver "$tools" k8s.io/kubernetes)"   # v1.36.3
  mm="${kv#v}"; major="${mm%%.*}"; minor="${mm#*.}"; minor="${minor%%.*}"
  cb=k8s.io/component-base/version
  ld="-s -w -X $cb.gitVersion=$kv -X $cb.gitMajor=$major -X $cb.gitMinor=$minor -X $cb.gitTreeState=clean"
  # `tool` = every tool directive of go.mod: k8s, etcd, kwok, training-operator.
  go build -p "$p" -trimpath -ldflags="$ld" -o "$tmp/" tool
)
if [[ "${HELIXRUN_BUILD_HELM:-1}" != 0 ]]; then
  (
    cd "$tools/helm"
    hv="$(modver "$tools/helm" helm.sh/helm/v3)"
    cg="$(modver "$tools/helm" k8s.io/client-go)"   # v0.37.x -> Kubernetes 1.37
    cmin="${cg#v0.}"; cmin="${cmin%%.*}"
    ld="-s -w -X helm.sh/helm/v3/internal/version.version=$hv -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
      ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$cmin"
    done
    go build -p "$p" -trimpath -ldflags="$ld" -o "$tmp/" tool
  )
fi
(
  cd "$tools/node"
  go build -p "$p" -trimpath -ldflags="-s -w" -o "$tmp/" ./coredns ./hostpath-provisioner
)
(
  cd "$tools/kubeflow"
  # `tool` = Trainer v2's controller manager and JobSet's controller.
  go build -p "$p" -trimpath -ldflags="-s -w" -o "$tmp/" tool ./kstatus
)
# go names a binary after the last path element that is not a major version:
# go.etcd.io/etcd/server/v3 -> "server".
mv "$tmp/server" "$tmp/etcd"
mv "$tmp/training-operator.v1" "$tmp/training-operator"
for b in "${bins[@]}"; do
  [[ -x "$tmp/$b" ]] || { echo "build.sh: missing $b after build" >&2; exit 1; }
done
end=$(date +%s)
copy_assets "$tmp"
echo "$((end - start))" >"$tmp/.build-seconds"
touch "$tmp/.complete"
rm -rf "$bindir"
mv "$tmp" "$bindir"
trap - EXIT
echo "build.sh: built in $((end - start))s" >&2
echo "$bindir"
