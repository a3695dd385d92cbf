# Two commands on a fresh Debian/Ubuntu machine:
#   make main   installs everything, then runs the noisy student pipeline on the
#               embedded default (teacher -> pseudo-labels -> student), <= 15 min on 2 cores
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
	@start=$$(date +%s); \
	$(PY) tools/pipeline.py --flagfile=flags/fashion_mnist_noisy_student.cfg --out=$(OUT) && \
	echo "main job: $$(( $$(date +%s) - start )) s wall"

# two pytest workers: much of a test is single-threaded (process start-up, tf.data,
# file I/O), so two overlap well even on two cores
test: install
	$(PY) -m pytest -q -n 2 --dist worksteal tests

clean:
	rm -rf $(VENV) runs
