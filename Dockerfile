# videochat: the embedded CPU stack (code and Python dependencies; the models go
# in a volume, assembled there at first start). docs/deploy.md has the details.
#
#   docker build -t videochat .
#   docker run -d --name videochat --network host -v videochat-weights:/app/weights videochat
#
# The page is then at http://<host>:8000. WebRTC media uses random UDP ports
# (aiortc has no port-range setting), hence --network host; docs/deploy.md says
# how to publish ports instead and when a TURN server is needed.
#
# Build arguments:
#   BASE_IMAGE  a Debian 12 (bookworm) image; `make docker-test` sets one made
#               locally with debootstrap.
# Behind a TLS-inspecting proxy, put its CA certificate (PEM) in docker/ca/
# before building: it is added to the image's trust store (docker/ca/README.md).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# python3 (3.11) + venv: the Makefile's `make install`; nodejs + npm: `npm pack
# kokoro-js` for the Kokoro voices (`videochat weights`); libgomp1: the OpenMP
# runtime xllamacpp links against (the other wheels bundle their libraries);
# tini: PID 1 that forwards signals and reaps child processes.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libgomp1 make nodejs npm python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash videochat

# Every client trusts the system store, which then holds any CA from docker/ca/.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH
COPY docker/install-ca.sh docker/ca/ /tmp/ca/
RUN /tmp/ca/install-ca.sh /tmp/ca && rm -rf /tmp/ca

WORKDIR /app

# The pinned dependencies first: this layer (about 2 GB) is rebuilt only when
# requirements.lock changes, not with every change of the code.
COPY requirements.lock ./
RUN python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.lock

# The project (.dockerignore lets in only what the server needs), installed
# exactly as `make install` does: the lock (already satisfied), the package
# with --no-deps (editable), mediapipe with --no-deps.
COPY . .
RUN make install PYTHON=python3 \
    && mkdir -p weights \
    && chown videochat:videochat weights

# Models, calibration (per machine), the API key and uploaded avatars live here.
VOLUME /app/weights
USER videochat
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
CMD ["serve", "--host", "0.0.0.0"]
