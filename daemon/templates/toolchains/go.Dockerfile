# toolchain: go (official tarball from go.dev; override with --build-arg GO_VERSION=...)
ARG GO_VERSION=1.25.0
ENV PATH=/usr/local/go/bin:/root/go/bin:$PATH
RUN set -eux; \
    arch="$(dpkg --print-architecture)"; \
    case "$arch" in amd64|arm64|armhf|i386|ppc64el|s390x) ;; *) echo "no Go tarball for $arch" >&2; exit 1;; esac; \
    case "$arch" in armhf) arch=armv6l;; i386) arch=386;; ppc64el) arch=ppc64le;; esac; \
    curl -fsSL "https://go.dev/dl/go${GO_VERSION}.linux-${arch}.tar.gz" -o /tmp/go.tar.gz; \
    rm -rf /usr/local/go; \
    tar -C /usr/local -xzf /tmp/go.tar.gz; \
    rm /tmp/go.tar.gz; \
    echo 'export PATH=/usr/local/go/bin:/root/go/bin:$PATH' > /etc/profile.d/50-go.sh; \
    go version
