#!/usr/bin/env bash
# Everything pytest-dataplane needs on a fresh Debian/Ubuntu machine, as root:
# the kernel-facing tools of the lab, a C compiler for BPF, wrk for benchmarks, and a venv
# with the package and its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/setup.sh: run as root (the lab creates network namespaces); try: sudo bash $0" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip python3-dev gcc \
    iptables nftables iproute2 procps \
    clang llvm libbpf-dev bpftool \
    wrk git ca-certificates >/dev/null

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# The Kubernetes components of the lab (etcd, kube-apiserver, ..., kubectl) are built from the
# kube/ Go module into ~/.cache/pytest-dataplane/kube; a build already there is reused at once.
# Go comes from https://go.dev/dl/ (Debian 12's golang is too old), so it is not apt-get'ed.
if [[ ${DATAPLANE_SKIP_KUBE_BUILD:-0} == 1 ]]; then
    echo "scripts/setup.sh: DATAPLANE_SKIP_KUBE_BUILD=1: not building kube/ (lab Kubernetes tests will skip)" >&2
else
    if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
        export PATH="/usr/local/go/bin:$PATH"
    fi
    if ! command -v go >/dev/null; then
        echo "scripts/setup.sh: building kube/ needs Go >= 1.26 and there is no 'go' on PATH or in /usr/local/go/bin." >&2
        echo "  Install it from https://go.dev/dl/ (untar into /usr/local), or rerun with DATAPLANE_SKIP_KUBE_BUILD=1" >&2
        echo "  and give the lab official binaries with --dataplane-kube-bin DIR." >&2
        exit 1
    fi
    .venv/bin/python -m pytest_dataplane kube build
fi
echo "setup done: $(.venv/bin/python -c 'import pytest_dataplane as p; print("pytest-dataplane", p.__version__)')"
