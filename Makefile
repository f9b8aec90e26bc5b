# Two commands on a fresh machine with Python 3.11:
#   make train   sets up .venv and trains VGG16 on CIFAR-10 with $(NP) processes
#   make test    sets up .venv and runs the tests
# Extra flags for train.py go in ARGS, e.g. make train NP=2 ARGS="--epoch 1".
PYTHON ?= python3
NP ?= 2
ARGS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup train test figure

setup: $(VENV)/installed

# chainer 7.8.1 is an sdist whose setup.py imports pkg_resources, which
# setuptools 70 and later no longer provide, and pip's isolated build would
# fetch the newest setuptools. So: pin setuptools in the venv and build
# chainer there, without isolation; everything else installs as wheels.
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "setuptools<70" wheel
	$(BIN)/pip install --quiet --no-build-isolation chainer==7.8.1
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

train: setup
	$(BIN)/mpiexec -n $(NP) $(BIN)/python train.py $(ARGS)

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests

figure: setup
	$(BIN)/python tools/draw_parallel_conv.py parallel-conv.png
