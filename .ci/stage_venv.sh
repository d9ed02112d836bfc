# Sourced by the test stages that need packages the main environment must not have (a lower transformers,
# gptqmodel's numpy pin, vLLM's transformers range). `stage_venv DIR` makes (or reuses) a venv at DIR that sees
# the main environment's packages through a .pth file and so shadows only what the stage installs on top: torch is
# never reinstalled, and this package's editable install works. site.addsitedir, not --system-site-packages: when
# the main environment is itself a venv, --system-site-packages exposes the base interpreter's packages instead.
# Needs $PY (the main environment's python); sets STAGE_PY to the stage venv's python.
stage_venv() {
    local venv=$1 main_site venv_site
    [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
    main_site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    venv_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$main_site')" > "$venv_site/layerdrop-main-env.pth"
    STAGE_PY="$venv/bin/python"
}
