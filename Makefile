# Two entry points for a newcomer; each creates its virtual environment if missing.
#   make demo   lean engine only (numpy, onnxruntime, astropy, Pillow): detect clumps in the
#               bundled example cutouts with the bundled default model
#   make test   full development environment (torch, torchvision, onnx, ...) and the test suite
PYTHON ?= python3
DEV_VENV := .venv
DEMO_VENV := .venv-engine
MODEL ?= models/clumpdet-native-sim.onnx
DEMO_OUT ?= out/demo

.PHONY: demo test dev clean

$(DEV_VENV)/.installed: pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEV_VENV)/bin/python -m pip install -q -c constraints-dev.txt -e '.[train,export,dev]'
	touch $@

$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEMO_VENV)/bin/python -m pip install -q -e .
	touch $@

dev: $(DEV_VENV)/.installed

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/clumpdet detect examples/cutouts --model $(MODEL) \
		--overwrite --out $(DEMO_OUT)/catalog.ecsv --summary $(DEMO_OUT)/summary.ecsv --overlays $(DEMO_OUT)/overlays
	@echo "catalogue: $(DEMO_OUT)/catalog.ecsv  overlays: $(DEMO_OUT)/overlays/"

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(DEV_VENV) $(DEMO_VENV) out
