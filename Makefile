# breastscreen: `make demo` and `make test` each build .venv from scratch when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the local CPU wheel: any other spec pulls gigabytes of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	# OpenCV pinned for the test environment: the synthetic phantoms draw text with its Hershey fonts,
	# whose rasterisation changed in 5.1, and the pinned reference outputs are made from those pixels
	$(PY) -m pip install --quiet opencv-python-headless==5.1.0.95
	# the ray and fast extras too, so that the --ray and --backend tests run in `make test` (they skip where missing)
	$(PY) -m pip install --quiet -e '.[test,ray,fast]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/breastscreen demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) demo-output
