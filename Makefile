# The two commands of the README. Both set up .venv (Python 3.11) first; re-runs skip what is
# already installed.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-photos app test clean

setup:
	@bash install/bootstrap.sh

# The synthetic world's MaskCLIP (tools/synthetic_world.py --scale ci: CLIP pre-training and
# both stages, about 3.5 CPU-minutes), trained on first use and cached; a partial cache (an
# interrupted run) is trained again. It segments validation scenes with a typed vocabulary
# whose first four classes are novel (never annotated in segmentation training); the world's
# textures are stuff (one region each), its blobs things. Each input is drawn beside its result.
SYNTHETIC ?= .cache/synthetic_world_ci
SYNTHETIC_VOCAB := purple blob; orange blob; water; brick; red blob; green blob; blue blob; \
	yellow blob; pink blob; cyan blob; grass; sand; snow; gravel
SYNTHETIC_STUFF := water; brick; grass; sand; snow; gravel
demo: setup
	@test -f $(SYNTHETIC)/results.json || { rm -rf $(SYNTHETIC) && \
		$(PY) tools/synthetic_world.py --scale ci --output $(SYNTHETIC); }
	$(PY) demo/demo.py --config-file configs/synthetic/maskclip_rma.yaml \
		--input $(SYNTHETIC)/demo_inputs --output output/demo --overwrite --task panoptic \
		--vocab "$(SYNTHETIC_VOCAB)" --stuff "$(SYNTHETIC_STUFF)" --side-by-side \
		--opts MODEL.WEIGHTS $(SYNTHETIC)/stage2/model_final.pth \
		MODEL.CLIP.WEIGHTS $(SYNTHETIC)/clip/synthetic_clip.pth \
		MODEL.MASKCLIP.PROPOSAL_WEIGHTS $(SYNTHETIC)/stage1/model_final.pth \
		DATASETS.TRAIN "()" DATASETS.TEST "()"

# The photo demo: the tiny config with RANDOM CLIP weights on scikit-image's photographs
# (the pipeline runs; labels mean nothing without real CLIP weights, see README).
demo-photos: setup
	$(PY) demo/demo.py --config-file configs/tiny/maskclip_tiny.yaml --output output/demo_photos --overwrite \
		--task all --vocab "person, astronaut; cat; coffee cup; rocket; sky; grass"

# The web app (demo/app.py) on http://127.0.0.1:7860 with the model of `make demo` (trained on
# first use, as there); APP_ARGS="--host 0.0.0.0 --port 8080" serves it elsewhere.
APP_ARGS ?=
app: setup
	$(PY) demo/app.py $(APP_ARGS)

test: setup
	MASKCLIP_CLIP_DOWNLOAD=0 $(PY) -m pytest -q tests

clean:
	rm -rf output .pytest_cache build *.egg-info
