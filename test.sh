#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh Debian machine (run as root):
#   1. installs the Debian packages the end-to-end bench needs, when any is missing;
#   2. makes sure a Docker engine answers (starts dockerd when none does);
#   3. installs the real Railway CLI (a debug build of railwayapp 5.71.0, cached under
#      /var/tmp/megaplan-e2e) when it is missing;
#   4. builds the Kubernetes cluster binaries the kubernetes provider's tests start (Debian's
#      `kubernetes` source package with golang-go; about 7 minutes, cached under
#      /var/tmp/megaplan-e2e/kubernetes-<version>, once per machine: tests/kube/build-cluster-binaries.sh);
#   5. builds the binaries and runs every test: `cargo test --workspace --no-fail-fast -- --test-threads=2`;
#   6. says how many end-to-end tests ran on the bench and how many were skipped, and why.
# Not root: nothing is installed; the end-to-end tests then skip and step 6 says why
# (`MEGAPLAN_E2E_REQUIRED=1`, set by .ci/run, turns every skip into a failure).
# Extra arguments go to `cargo test` before `--` (e.g. `./test.sh -p megaplan-cloudd`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
stamp() { printf '[test.sh +%ss] %s\n' "$(($(date +%s) - start))" "$*"; }

bench_cache=/var/tmp/megaplan-e2e
railway_version=5.71.0
railway_root=$bench_cache/railway-$railway_version
packages=(docker.io docker-compose openssh-server openssh-client rsync tmux debootstrap shellcheck
    sqlite3 python3 git procps iproute2 libxml2-utils systemd build-essential ca-certificates
    util-linux golang-go golang-github-modern-go-reflect2-dev etcd-server curl openssl dpkg-dev
    chromium chromium-driver)

missing_packages() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

if [[ $(id -u) -eq 0 ]]; then
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]})); then
        stamp "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # sshd's privilege-separation folder (normally made by its systemd unit, which may not run).
    mkdir -p /run/sshd && chmod 0755 /run/sshd
    mkdir -p "$bench_cache"
    if ! docker info >/dev/null 2>&1; then
        stamp "starting dockerd"
        setsid /usr/sbin/dockerd >>"$bench_cache/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 90); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
        if ! docker info >/dev/null 2>&1; then
            echo "dockerd did not answer within 90 s; its log follows" >&2
            tail -n 50 "$bench_cache/dockerd.log" >&2 || true
        fi
    fi
    stamp "docker engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo none)"
else
    stamp "not root: installing nothing; end-to-end tests that need root or Docker will skip"
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rust-version 1.94 or newer) first" >&2
    exit 1
fi

# The real Railway CLI. Only its debug builds honour RAILWAY_BACKBOARD_URL, the hook that points
# every GraphQL call at the tests' local stand-in service, so it is built here, once per machine.
if [[ $(id -u) -eq 0 && ! -x $railway_root/bin/railway ]]; then
    stamp "installing the Railway CLI $railway_version (debug build; several minutes, once)"
    cargo install railwayapp --locked --debug --version "$railway_version" --root "$railway_root" ||
        stamp "the Railway CLI did not install; the railway end-to-end tests will say so"
fi
if [[ -x $railway_root/bin/railway ]]; then
    export MEGAPLAN_RAILWAY_CLI=$railway_root/bin/railway
fi

# The real cluster of the kubernetes provider's tests (kube-apiserver, controller-manager,
# scheduler, kubelet), built from Debian's source package once per machine.
if [[ $(id -u) -eq 0 ]]; then
    stamp "Kubernetes cluster binaries (built once per machine; several minutes the first time)"
    if kube_bin=$(tests/kube/build-cluster-binaries.sh); then
        export MEGAPLAN_KUBE_BIN=$kube_bin
    else
        stamp "the Kubernetes cluster binaries did not build; the kubernetes end-to-end tests will say so"
    fi
fi

report=$(mktemp "${TMPDIR:-/tmp}/megaplan-e2e-report.XXXXXX")
trap 'rm -f "$report"' EXIT
export MEGAPLAN_E2E_REPORT=$report

stamp "cargo build --workspace --bins"
cargo build --workspace --bins
stamp "cargo test --workspace --no-fail-fast $* -- --test-threads=2"
set +e
cargo test --workspace --no-fail-fast "$@" -- --test-threads=2
status=$?
set -e

# One line per end-to-end test: the last word it said (a skip after a start counts as a skip).
summary=$(awk -F'\t' '
    { outcome[$2] = ($1 == "skipped" || outcome[$2] == "skipped") ? "skipped" : $1
      if ($1 == "skipped") why[$2] = $3 }
    END {
        for (t in outcome) if (outcome[t] == "ran") ran++; else skipped++
        printf "end-to-end tests on the bench: %d ran, %d skipped\n", ran, skipped
        for (t in why) printf "  skipped %s: %s\n", t, why[t]
    }' "$report")
stamp "$summary"
exit "$status"
