# videochat: the embedded CPU stack in one image (about 1.4 GB of models).
#
#   docker build -t videochat .
#   docker run --rm --network host videochat
#
# WebRTC media uses random UDP ports on the server's own addresses, so run it
# with host networking (or publish a UDP range and set the ICE addresses
# yourself); the page is then at http://<host>:8000.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/app/.venv/bin:$PATH

# make: the Makefile; npm (+ nodejs): `npm pack kokoro-js` for the Kokoro voices;
# libgomp1: OpenMP runtime that the xllamacpp wheel links against (the other
# wheels bundle their native libraries).
RUN apt-get update \
    && apt-get install -y --no-install-recommends make nodejs npm libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# 1. Pinned dependencies (cached until requirements.lock changes).
COPY requirements.lock ./
RUN python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.lock

# 2. Models (cached until the assembly code or the config changes): only what
#    `videochat weights` needs, run from the source tree.
COPY server/__init__.py server/cli.py server/config.py server/weights.py server/
COPY configs/ configs/
RUN .venv/bin/python -m server.cli weights

# 3. The project. Copied path by path so that a local .venv/ or weights/ never
#    lands in the image.
COPY pyproject.toml Makefile README.md ./
COPY server/ server/
COPY models/ models/
COPY pipelines/ pipelines/
COPY static/ static/
COPY bench/ bench/
COPY docs/ docs/
COPY tests/ tests/
COPY weights/README.md weights/
RUN make install weights

EXPOSE 8000
CMD ["videochat", "serve", "--host", "0.0.0.0"]
