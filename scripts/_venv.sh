# Sourced by scripts/test and scripts/demo: make or refresh .venv with the package installed.
# System packages it needs are installed when root, or named when not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

need_packages() {
    local missing=()
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    pkg-config --exists libsystemd 2>/dev/null || missing+=(libsystemd-dev)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || missing+=(python3-dev)
    for extra in "$@"; do
        dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
    done
    echo "${missing[@]:-}"
}

ensure_system_packages() {
    local missing
    missing="$(need_packages "$@")"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing system packages: $missing" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "missing system packages; run: sudo apt-get install $missing" >&2
        exit 1
    fi
}

ensure_venv() {
    local stamp="$VENV/.electiond-installed" want
    want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $(python3 -V 2>&1)"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "installing electiond and its dependencies into $VENV" >&2
        if ! { "$VENV/bin/python" -m pip install --upgrade pip \
               && "$VENV/bin/python" -m pip install -e "$ROOT[test]"; } > "$VENV/pip.log" 2>&1; then
            tail -30 "$VENV/pip.log" >&2
            echo "pip install failed; full log: $VENV/pip.log" >&2
            exit 1
        fi
        echo "$want" > "$stamp"
    fi
}
