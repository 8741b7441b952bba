# Every target sets itself up first (scripts/setup_env.sh is idempotent and fast when
# nothing changed), and every ROS process it starts stays on loopback in its own domain.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
ifndef ROS_DOMAIN_ID
export ROS_DOMAIN_ID := $(shell python3 -c 'import random; print(random.randint(1, 101))')
endif

.PHONY: setup test demo bench soak lint colcon clean train-toy

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest

# With the default model at hand (cached or hub reachable): the node on the bundled photographs.
# Offline (HF_HUB_OFFLINE=1, CI): the trained toy model on the synthetic camera, each answer printed
# beside the scene's ground truth. Scripted queries, overlays under demo_out/.
# DEMO_ARGS: --offline | --online | --model toy-regionvlm | --scenes N
demo: setup
	$(PY) -m region_perception.ros.demo $(DEMO_ARGS)

# Speed and memory against the performance goals; rewrites docs/benchmarks.md, which names the commit
# (and "+ uncommitted changes"), the date, the machine and its load. Passive OpenMP waits: on a shared
# machine a spinning wait takes the CPU the node's own figures are measured with.
bench: setup
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m region_perception.cli bench --out docs/benchmarks.md
	$(PY) -m region_perception.cli cost --append docs/benchmarks.md > /dev/null

# Reliability soak (not in CI): 30 Hz camera + 2 Hz queries for SOAK_MINUTES minutes.
SOAK_MINUTES ?= 10
soak: setup
	HF_HUB_OFFLINE=1 $(PY) -m region_perception.ros.soak --minutes $(SOAK_MINUTES) --json bench_out/soak.json

# Train the toy RegionVLM, Florence-2 and RegionGPT on the synthetic world (CPU): stage 0 pre-trains each vision
# tower, stage 1 the region pathway on it frozen; evaluate on held-out scenes; install in region_perception/data/toy/
# those that meet their targets (docs/training.md). Packaged weights are only replaced with TOY_OVERWRITE=1;
# TOY_ONLY=toy-florence2 trains one. Threads: OMP_NUM_THREADS (default: the cores, at most 4), with passive
# OpenMP waits (spinning waits made a step 20x slower when the machine had other load).
TOY_THREADS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
train-toy: setup
	HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TOY_THREADS)} \
	  $(PY) -m region_perception.training.toys \
	  --work build/train-toy $(if $(filter 1 yes true,$(TOY_OVERWRITE)),--overwrite) $(if $(TOY_ONLY),--only $(TOY_ONLY))

lint: setup
	$(PY) -m ruff check .

# The ROS users' route, against the venv's ROS 2 (see README).
colcon: setup
	cd ros2_ws && source $(VENV)/bin/activate && AMENT_PREFIX_PATH=$(VENV) CMAKE_PREFIX_PATH=$(VENV) \
	  colcon build --cmake-args -DPython3_EXECUTABLE=$(PY) -DBUILD_TESTING=OFF

clean:
	rm -rf build ros2_ws/build ros2_ws/install ros2_ws/log demo_out bench_out
