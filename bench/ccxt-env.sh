#!/bin/sh
# The ccxt comparison's own environment (`python -m bench.depth` runs ccxt's
# side in it): ccxt from PyPI, never a dependency of candled (not in
# pyproject.toml or uv.lock). Usage: sh bench/ccxt-env.sh [DIR] (default .bench-venv).
set -eu
cd "$(dirname "$0")/.."
DIR=${1:-.bench-venv}
CCXT_VERSION=${CCXT_VERSION:-4.5.90}
if [ -x .tools/bin/uv ]; then UV=.tools/bin/uv; else UV=uv; fi
[ -x "$DIR/bin/python" ] || "$UV" venv -q --python "$(.venv/bin/python -c 'import sys; print(sys.executable)' 2>/dev/null || command -v python3)" "$DIR"
"$UV" pip install -q --python "$DIR/bin/python" "ccxt==$CCXT_VERSION"
"$DIR/bin/python" -c 'import ccxt; print("ccxt", ccxt.__version__, "in", __import__("sys").prefix)'
