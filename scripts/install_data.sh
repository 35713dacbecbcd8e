#!/usr/bin/env bash
# Installs the Debian packages that carry netslim's real data, or says what to do.
set -euo pipefail
fmnist="${NETSLIM_DATA:-/usr/share/datasets/fashion-mnist}"
pydocs="${NETSLIM_TEXT:-/usr/share/doc/python3.11/html/_sources}"
missing=()
[ -f "$fmnist/train-images-idx3-ubyte.gz" ] || missing+=(dataset-fashion-mnist)
[ -d "$pydocs" ] || missing+=(python3.11-doc)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "netslim: missing data packages: ${missing[*]}." >&2
  echo "  Install them as root: sudo apt-get install ${missing[*]}" >&2
  echo "  or point NETSLIM_DATA (Fashion-MNIST IDX .gz folder) / NETSLIM_TEXT (pydocs _sources) at copies." >&2
  exit 2
fi
echo "netslim: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
