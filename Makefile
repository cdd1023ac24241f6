# The README's two commands. Both create .venv on first use and are quick afterwards.
#   make demo [DATA=/path/to/rxrx1] [OUT=out/demo] [BUDGET=minutes] [RECIPE=file.yaml]   the main job
#   make test                                        the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= out/demo
DATA   ?=
BUDGET ?=
RECIPE ?=
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trainer.demo --out '$(OUT)' $(if $(DATA),--data '$(DATA)') $(if $(BUDGET),--budget '$(BUDGET)') \
		$(if $(RECIPE),--recipe '$(RECIPE)')

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
