# Sourced by the install scripts of Python tools the tests run (noida-db, schemathesis).
# install_pip_tool PACKAGE VERSION VENV: installs PACKAGE==VERSION into the virtualenv VENV
# unless that exact version is already there (python3-venv from Debian when missing).
install_pip_tool() {
  local package="$1" version="$2" venv="$3"
  if "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('$package') == '$version'" 2>/dev/null; then
    return 0
  fi
  echo "==> installing $package $version"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$package==$version"
}
