# The two commands of the README. Both set up .venv (Python 3.11) first; re-runs skip what is
# already installed.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

setup:
	@bash tools/bootstrap.sh

demo: setup
	$(PY) demo/demo.py --config-file configs/tiny/maskclip_tiny.yaml --output output/demo \
		--task all --vocab "person, astronaut; cat; coffee cup; rocket; sky; grass"

test: setup
	MASKCLIP_CLIP_DOWNLOAD=0 $(PY) -m pytest -q tests

clean:
	rm -rf output .pytest_cache build *.egg-info
