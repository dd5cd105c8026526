# Two commands on a fresh machine: `make demo` (the main job on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/demo-cnn

.PHONY: demo test bench clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(BIN)/.installed-bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tfpurify train classifier --arch cnn --dataset fashion_mnist --epochs 3 --out $(RUN)
	$(BIN)/tfpurify eval $(RUN) --attacks fgsm,pgd --eps 0.1,0.2 --limit 1000 --report $(RUN)/report.md

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed-bench
	$(BIN)/python benchmarks/attack_throughput.py

clean:
	rm -rf $(VENV) runs *.egg-info
