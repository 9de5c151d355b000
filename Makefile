# make demo: set up .venv with the lab extra and run the demo.  make test: set up .venv with dev extras
# (the lab's included) and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-slow accuracy lint clean browser bench bench-train claims claims-report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install when the package metadata or the pins change. Every target here
# runs the lab, so .installed is normlab with its lab extra; dev includes the lab.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[lab]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.installed

# The lab on the built-in digits: 4 norms x 3 batch sizes x 3 seeds, into runs/<timestamp>/.
demo: $(VENV)/.installed
	$(BIN)/normlab compare --norms none,bn,bn-scalar,ln --batch-sizes 4,32,256 --seeds 3 --stack-seeds

# The claims study: docs/claims/claims.md, claims.json, the figures and the records they come from
# (about 4 hours on 2 cores; it resumes from the records committed in docs/claims).
MNIST ?= ../shared/data/mnist
claims: $(VENV)/.installed
	$(BIN)/normlab study claims --data-dir $(MNIST) --budget full --out runs/claims-full --report docs/claims

# The same report regenerated from the committed records alone, training nothing.
claims-report: $(VENV)/.installed
	$(BIN)/normlab study claims --report-only --report docs/claims

# Each kind's speed as a ratio to torch's native layer (a few minutes on 2 cores).
bench: $(VENV)/.installed
	$(BIN)/normlab bench

# TensorFlow for bench-train's TF-Keras side, in a virtual environment of its own.
.venv-tf/.installed: benchmarks/requirements-tf.txt
	rm -f $@
	$(PYTHON) -m venv .venv-tf
	.venv-tf/bin/python -m pip install --quiet --disable-pip-version-check -r $< \
	  > .venv-tf/install.log 2>&1 || { tail -n 3 .venv-tf/install.log; exit 1; }
	touch $@

# Training speed end to end on MNIST (../shared/data/mnist): the lab's loop vs a hand-written
# one and TF-Keras, --jobs 2 vs 1, peak memory (about 5 minutes on 2 cores). Without TensorFlow
# (its install failed) the benchmark still runs and says why TF-Keras was skipped.
bench-train: $(VENV)/.installed
	-@$(MAKE) --no-print-directory .venv-tf/.installed || \
	  echo "could not install TensorFlow into .venv-tf: the benchmark skips TF-Keras"
	$(BIN)/python benchmarks/train_speed.py --data-dir ../shared/data/mnist --json bench-train.json

# pytest exits 5 when it collects no test: say so and succeed.
define pytest
	KERAS_BACKEND=torch $(BIN)/python -m pytest $(1); \
	status=$$?; if [ $$status -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$status
endef

# The report's browser test needs Debian's chromium: install it where apt-get and root allow,
# otherwise say so (the test then skips, or fails when CI is set).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the report's browser test"; \
	    (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null)); \
	  else echo "chromium is not installed and cannot be here: the browser test will skip"; fi; }

test: $(VENV)/.installed-dev browser
	$(call pytest,-m "not slow" -q)

# The slow tests include the Ray executor's, on a local Ray cluster: install the ray extra.
$(VENV)/.installed-ray: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[dev,ray]"
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed

test-slow: $(VENV)/.installed-ray
	$(call pytest,-m slow -q)

# The default suite, printing the largest error each oracle comparison saw.
accuracy: $(VENV)/.installed-dev
	$(call pytest,-m "not slow" -q --error-report)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/*.egg-info
