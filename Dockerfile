# The operator's image, for those with a container engine: `docker build -t firebreak:0.1.0 .`
# (the Tiltfile does this). `make image` builds the same image without one, from the same
# lists: the Debian packages of image/debian-packages (with what they depend on), the
# runtime-only Python set of requirements-runtime.lock (hashes required, wheels only), in a
# virtual environment at /opt/firebreak over Debian's python3, run by user 10001.
# tests/unit/test_image_recipe.py keeps this file and image/build.py in step.

# debian:bookworm-slim, pinned by digest: update the digest and this comment together.
ARG BASE=debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818

FROM ${BASE} AS build
COPY image/debian-packages /tmp/debian-packages
RUN apt-get update \
 && sed -e 's/#.*//' /tmp/debian-packages | xargs apt-get install -y --no-install-recommends \
 && apt-get install -y --no-install-recommends python3-pip python3-venv
WORKDIR /src
COPY requirements-runtime.lock pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv --without-pip /opt/firebreak \
 && python3 -m pip --python /opt/firebreak/bin/python3 install --no-cache-dir --no-compile \
      --no-deps --require-hashes --only-binary=:all: -r requirements-runtime.lock \
 && python3 -m pip --python /opt/firebreak/bin/python3 install --no-cache-dir --no-compile \
      --no-deps . \
 && python3 -m compileall -q --invalidation-mode unchecked-hash /opt/firebreak/lib

FROM ${BASE}
COPY image/debian-packages /tmp/debian-packages
RUN apt-get update \
 && sed -e 's/#.*//' /tmp/debian-packages | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/debian-packages \
 && groupadd --gid 10001 firebreak \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin firebreak
COPY --from=build /opt/firebreak /opt/firebreak
ENV PATH=/opt/firebreak/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="firebreak" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="A Kubernetes operator for automated security incident response" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
ENTRYPOINT ["/opt/firebreak/bin/firebreak"]
