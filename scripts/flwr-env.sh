# Sourced by the scripts: Flower's home inside the project (git-ignored, excluded from the
# FAB) and no runtime `uv sync` of the app's dependencies (they are in .venv already).
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PATH="$PWD/.venv/bin:$PATH"
# Ray's start-up FutureWarning "Tip: In future versions of Ray, Ray will no longer override
# accelerator visible devices ..." asks for a setting (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0)
# that would show every GPU to clients given num-gpus = 0: nothing to act on here, so that
# one FutureWarning (its text starts "Tip") is ignored in every process these scripts start.
case ",${PYTHONWARNINGS:-}," in
  *",ignore:Tip:FutureWarning,"*) ;;
  *) export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Tip:FutureWarning" ;;
esac
