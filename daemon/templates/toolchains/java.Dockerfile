# toolchain: java (the distribution's default OpenJDK, headless)
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    apt-get install -y --no-install-recommends default-jdk-headless; \
    rm -rf /var/lib/apt/lists/*; \
    java -version
ENV JAVA_HOME=/usr/lib/jvm/default-java
