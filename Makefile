# Two commands on a fresh Debian/Ubuntu machine:
#   make main   installs everything, then trains, evaluates and exports the teacher
#   make test   installs everything, then runs the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT ?= runs/fashion_mnist
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install main test clean

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(FMNIST) $(VENV)/.installed

main: install
	$(PY) tools/train.py --flagfile=flags/fashion_mnist_teacher.cfg --out=$(OUT)/teacher
	$(PY) tools/evaluate.py --model=$(OUT)/teacher --dataset=fashion_mnist

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
