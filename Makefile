# Two commands on a fresh machine with Python 3.11, 3.12 or 3.13:
#   make train   sets up $(VENV) and trains VGG16 on CIFAR-10 with $(NP) processes
#   make test    sets up $(VENV) and runs the tests, then prints the 20 slowest
# and make lint checks the code with ruff (configured in pyproject.toml).
# Extra flags for train.py go in ARGS, e.g. make train NP=2 ARGS="--epoch 1".
# PYTHON picks the interpreter (a full path works, e.g. $(pyenv prefix 3.13.0)/bin/python3.13);
# give each interpreter its own VENV. NUMPY pins numpy's version (e.g. NUMPY=1.26.4);
# empty, pip takes the newest that requirements.txt allows.
PYTHON ?= python3
NP ?= 2
ARGS ?=
VENV ?= .venv
NUMPY ?=
BIN := $(VENV)/bin

.PHONY: setup train test lint figure

setup: $(VENV)/installed

# chainer 7.8.1 is an sdist whose setup.py imports pkg_resources, which
# setuptools 70 and later no longer provide, and pip's isolated build would
# fetch the newest setuptools. So: pin setuptools in the venv and build
# chainer there, without isolation; everything else installs as wheels.
# setuptools stays in the venv: chainer imports pkg_resources at run time.
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "setuptools<70" wheel
	$(BIN)/pip install --quiet --no-build-isolation chainer==7.8.1
	$(BIN)/pip install --quiet --only-binary numpy -r requirements.txt $(if $(NUMPY),"numpy==$(NUMPY)")
	touch $@

# Without ARGS, the full run: say first what it costs (measured: README.md).
train: setup
	@$(if $(ARGS),:,echo 'make train: 20 epochs of CIFAR-10 on $(NP) CPU processes, 5 to 6 hours on 2 cores; the 5-minute run: make train ARGS="--dataset synthetic --train-size 3200 --test-size 512 --epoch 6"')
	$(BIN)/mpiexec -n $(NP) $(BIN)/python train.py $(ARGS)

# --durations: the slowest tests, last, to keep the suite's time in view.
test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q --durations=20 tests

lint: setup
	$(BIN)/ruff check .

figure: setup
	$(BIN)/python tools/draw_parallel_conv.py parallel-conv.png
