# Sourced by scripts/test and scripts/demo: make sure .venv exists and holds the project as it is now.
# Needs nothing but python3; the install is redone only when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SCOPEGATE_VENV:-$root/.venv}"
extras="${1:-}"
stamp="$venv/.scopegate-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)${extras}"
if [ ! -x "$venv/bin/python" ]; then
  echo "scopegate: creating virtual environment in $venv" >&2
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "scopegate: installing dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}" >&2
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
