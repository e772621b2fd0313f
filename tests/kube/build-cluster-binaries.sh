#!/usr/bin/env bash
# Builds the Kubernetes control-plane and node binaries the kubernetes end-to-end tests start
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet) from Debian bookworm's
# `kubernetes` source package, with Debian's golang-go and every Go dependency vendored, so
# nothing but the Debian archive is needed. The binaries are cached outside the checkout in
# /var/tmp/megaplan-e2e/kubernetes-<debian version>-<recipe>/bin, keyed by the package version, so a
# machine builds them once (about 7 minutes on 2 cores). Run as root; prints the bin directory.
set -euo pipefail

bench_cache=${MEGAPLAN_BENCH_CACHE:-/var/tmp/megaplan-e2e}
sources_file=/etc/apt/sources.list.d/megaplan-bookworm-src.sources
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# Bumped when the recipe changes, so binaries of an older recipe are rebuilt.
recipe=r2
# The vendored github.com/modern-go/reflect2 1.0.1 crashes under Go >= 1.18 (a nil pointer
# when the API server decodes any JSON object with a map: labels, annotations, data); Debian's
# reflect2 1.0.2 (same API) replaces it.
reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2

say() { printf '[build-cluster-binaries] %s\n' "$*" >&2; }

mkdir -p "$bench_cache"
# One builder per machine: concurrent test.sh runs wait for the first one's build.
exec 9>"$bench_cache/kubernetes-build.lock"
flock 9

if [[ ! -f $sources_file ]]; then
    # The deb-src twin of the machine's own bookworm line (same mirror, same keyring).
    cat >"$sources_file" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q >&2
fi

version=$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ { print $2; exit }')
if [[ -z $version ]]; then
    say "apt-cache knows no 'kubernetes' source package (is the deb-src line reachable?)"
    exit 1
fi
root=$bench_cache/kubernetes-$version-$recipe
bin=$root/bin
complete=1
for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || complete=0; done
if ((complete)); then
    echo "$bin"
    exit 0
fi

say "building kubernetes $version (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet)"
work=$root/src
rm -rf "$work"
mkdir -p "$work"
(cd "$work" && apt-get source --download-only -q kubernetes >&2)
orig=$(find "$work" -maxdepth 1 -name 'kubernetes_*.orig.tar.*' | head -n 1)
if [[ -z $orig ]]; then
    say "no orig tarball in $work"
    exit 1
fi
tree=$work/kubernetes
mkdir -p "$tree"
tar -xf "$orig" -C "$tree" --strip-components=1
if [[ ! -f $reflect2_src/reflect2.go ]]; then
    say "missing $reflect2_src (apt-get install golang-github-modern-go-reflect2-dev)"
    exit 1
fi
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r "$reflect2_src" "$tree/vendor/github.com/modern-go/reflect2"
# The Kubernetes makefiles want the tree at $GOPATH/src/k8s.io/kubernetes.
mkdir -p "$tree/.go/src/k8s.io"
ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
(
    cd "$tree/.go/src/k8s.io/kubernetes"
    export GOPATH=$tree/.go GOFLAGS=-mod=vendor GO111MODULE=on CGO_ENABLED=0 GOCACHE=$work/.gocache
    # 1.20.5+really1.20.2-1.1+deb12u1 is upstream 1.20.2: the version the binaries report.
    upstream=${version%%-*}
    upstream=${upstream##*really}
    export KUBE_GIT_VERSION=v$upstream KUBE_GIT_TREE_STATE=clean
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" >&2
)
mkdir -p "$bin.partial"
for b in "${binaries[@]}"; do
    found=$(find "$tree/_output" -type f -name "$b" -perm -u+x | head -n 1)
    if [[ -z $found ]]; then
        say "the build produced no $b"
        exit 1
    fi
    cp "$found" "$bin.partial/$b"
done
rm -rf "$bin"
mv "$bin.partial" "$bin"
# The source tree and Go cache are about 2 GB; only the binaries are kept.
rm -rf "$work"
say "kubernetes $version binaries in $bin"
echo "$bin"
