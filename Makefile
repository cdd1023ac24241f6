# The README's two commands. Both create .venv on first use and are quick afterwards.
#   make demo [DATA=/path/to/rxrx1] [OUT=out/demo]   the main job, end to end
#   make test                                        the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
OUT    ?= out/demo
DATA   ?=
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m trainer.demo --out '$(OUT)' $(if $(DATA),--data '$(DATA)')

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

clean-venv:
	rm -rf $(VENV)
