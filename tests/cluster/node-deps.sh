#!/usr/bin/env bash
# Install the Debian packages the real test node runs on, where they are missing:
# containerd + runc (the node's runtime), the CNI plugins (pod network), iptables
# (kube-proxy, masquerade), busybox-static (the training-operator's init container),
# docker.io (builds the images), debootstrap (a local Debian base image when no
# registry is reachable). Needs root; a no-op when everything is there.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables busybox-static docker.io debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "node-deps.sh: missing Debian packages ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "node-deps.sh: installed ${missing[*]}" >&2
