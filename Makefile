# The README's two commands (demo, test) and the phenomic-map ones. All create .venv on first use.
#   make demo [DATA=/path/to/data] [DATASET=name] [METADATA=path] [OUT=out/demo] [BUDGET=minutes] [RECIPE=file.yaml]
#                                                    the main job
#   make test                                        the test suite
#   make maps-deps [PY=python]                       the phenomic-map dependencies (into another environment too)
#   make maps-benchmark                              benchmarks/maps.py on the synthetic knockout screen
#   make maps DATA=/path/to/rxrx3-core [OUT=out/maps] [PLAN="plan.steps_single=600"]
#                                                    a layout directory -> the main job's model -> the map, its
#                                                    benchmark table and pictures (OUT/maps)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= out/demo
MAPS_OUT = $(if $(filter command line,$(origin OUT)),$(OUT),out/maps)
PLAN   ?=
MAPS_ARGS ?=
DATA   ?=
DATASET ?=
METADATA ?=
BUDGET ?=
RECIPE ?=
STAMP  := $(VENV)/.installed
# installed with --no-deps: their declared dependencies are heavy (efaar-benchmarking: scvi-tools, wget, ...) or
# clash with constraints.txt (centrosome: pillow<12); what they do import is in setup.py's `maps` extra
MAPS_NODEPS := efaar-benchmarking==1.0 cp-measure==0.3.0 centrosome==1.3.4

.PHONY: demo test install clean-venv maps-deps maps-benchmark maps

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	$(PY) -m pip install -q --no-deps -c constraints.txt $(MAPS_NODEPS)
	touch $(STAMP)

maps-deps:
	$(PY) -m pip install -q -c constraints.txt -e '.[maps]'
	$(PY) -m pip install -q --no-deps -c constraints.txt $(MAPS_NODEPS)

maps-benchmark: $(STAMP)
	$(PY) benchmarks/maps.py

# every experiment trained (a screen puts each gene in one experiment: a held-out experiment's genes would never be
# trained on) within each experiment's genes (the plan's plan.within), then the map of its embeddings joined with
# the metadata (docs/maps.md)
maps: $(STAMP)
	test -n '$(DATA)' || { echo "make maps: DATA=/path/to/an RxRx3-core-layout directory is required"; exit 2; }
	$(PY) -m trainer.demo --data '$(DATA)' --out '$(MAPS_OUT)' $(PLAN) plan.val_fold=-1 plan.steps_pseudo=0
	$(PY) -m trainer.maps '$(MAPS_OUT)/embeddings.parquet' '$(MAPS_OUT)/maps' --embeddings-id id_code \
		--metadata '$(DATA)/metadata_rxrx3_core.csv' --batch experiment_name plate --embed-dims auto \
		--corrections none centerscale pca_cs tvn $(MAPS_ARGS)

demo: $(STAMP)
	$(PY) -m trainer.demo --out '$(OUT)' $(if $(DATA),--data '$(DATA)') $(if $(DATASET),--dataset '$(DATASET)') \
		$(if $(METADATA),--metadata '$(METADATA)') $(if $(BUDGET),--budget '$(BUDGET)') $(if $(RECIPE),--recipe '$(RECIPE)')

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
