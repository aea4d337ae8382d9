#!/usr/bin/env bash
# Installs lowbit's build dependencies from Debian if any are missing. Idempotent: a second run
# does nothing. Needs root (or passwordless sudo) only when something is missing.
#   scripts/setup.sh          install what is missing
#   scripts/setup.sh --list   print the package names, one per line (installs nothing); CI feeds
#                             them to ../shared/tools/setup-audit
#   scripts/setup.sh --with-chromium   also install Debian's chromium (optional: the report tests
#                             take a headless screenshot with it; the build never uses it)
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build ccache pkg-config
  libeigen3-dev libdnnl-dev libhdf5-dev libfmt-dev zlib1g-dev
  ocl-icd-opencl-dev opencl-c-headers
  libgtest-dev libgmock-dev libbenchmark-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev
  dataset-fashion-mnist fortunes
  python3-h5py python3-numpy hdf5-tools
  libopenmpi-dev openmpi-bin
)
# Debian's libdnnl-dev is built with the OpenCL GPU runtime: its dnnl-config.cmake runs
# find_package(OpenCL REQUIRED) and its target links OpenCL::OpenCL, so the OpenCL loader's
# development files and headers are build dependencies even though lowbit runs on the CPU.

case "${1:-}" in
  --list)
    printf '%s\n' "${PACKAGES[@]}"
    exit 0
    ;;
  --with-chromium) PACKAGES+=(chromium) ;;
  "") ;;
  *)
    echo "usage: scripts/setup.sh [--list | --with-chromium]" >&2
    exit 2
    ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} dependencies are installed"
  exit 0
fi

echo "setup: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "setup: error: missing Debian packages: ${missing[*]}" >&2
  echo "setup: run this script as root, or install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "setup: warning: apt-get update failed; trying the install with the current package lists" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
