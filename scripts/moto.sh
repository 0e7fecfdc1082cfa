#!/usr/bin/env bash
# moto's S3 server, the S3-compatible store the object-storage tests run against
# (tests/api/audio_storage.rs): a real server on loopback, not a mock of the client library.
#
#   scripts/moto.sh install        create the virtualenv if missing (pinned versions)
#   scripts/moto.sh serve PORT     run the server on 127.0.0.1:PORT in the foreground
#
# The virtualenv lives under target/ (CARGO_TARGET_DIR if set), as schemathesis' does, so
# `cargo clean` removes it and nothing lands in the work tree.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=5.2.6
# Every package of the virtualenv pinned (pip freeze of a working install of moto[server]).
REQUIREMENTS=scripts/moto-requirements.txt
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
case "$TARGET" in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
VENV="$TARGET/moto-venv"
SERVER="$VENV/bin/moto_server"

installed() { [ -x "$SERVER" ] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '$VERSION')" 2>/dev/null; }

case "${1:-}" in
  install)
    if installed; then exit 0; fi
    echo "moto: installing $VERSION into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    ;;
  serve)
    port=${2:?usage: $0 serve PORT}
    if ! installed; then
      echo "moto $VERSION is not installed; run: scripts/moto.sh install" >&2
      exit 3
    fi
    exec "$SERVER" -H 127.0.0.1 -p "$port"
    ;;
  *)
    echo "usage: $0 install | serve PORT" >&2
    exit 2
    ;;
esac
