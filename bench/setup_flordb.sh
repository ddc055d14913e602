#!/usr/bin/env bash
# Create bench/.work/flordb-venv with FlorDB 4.0.1 (the anchor implementation) for bench/run.py.
# Idempotent: re-running only checks the venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.work/flordb-venv"
py="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import torch, sklearn, importlib.metadata as m; assert m.version("flordb") == "4.0.1"' 2>/dev/null; then
  echo "flordb venv ready: $venv"
  exit 0
fi

mkdir -p "$here/.work"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: this takes the CPU wheel from local disk (an unpinned torch pulls a multi-GB CUDA build).
"${pip[@]}" torch==2.13.0 2> >(grep -v "is ignored" >&2)
"${pip[@]}" flordb==4.0.1 scikit-learn 2> >(grep -v "is ignored" >&2)
"$venv/bin/python" -c 'import torch, sklearn, pandas, importlib.metadata as m; print("flordb", m.version("flordb"), "pandas", pandas.__version__, "torch", torch.__version__)'
echo "flordb venv ready: $venv"
