# Two commands on a fresh machine: `make demo` (the main job on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= runs/demo

.PHONY: demo test bench mutation clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,corruptions]"
	touch $@

$(BIN)/.installed-bench: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

$(BIN)/.installed-mutation: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev,mutation]"
	touch $@

# The main job end to end: train a classifier and a defense, evaluate them (gray-box and white-box,
# PGD and AutoAttack), export one SavedModel, and classify test images through it in a new process.
demo: $(BIN)/.installed
	$(BIN)/tfpurify train classifier --arch cnn --dataset fashion_mnist --epochs 2 --out $(DEMO)/cnn
	$(BIN)/tfpurify train denoising_ae --dataset fashion_mnist --epochs 2 --out $(DEMO)/dae
	$(BIN)/tfpurify eval $(DEMO)/dae --classifier $(DEMO)/cnn --threat-model none,graybox,whitebox \
		--attacks fgsm,pgd,autoattack --eps 0.1 --limit 200
	$(BIN)/tfpurify export $(DEMO)/dae --classifier $(DEMO)/cnn --name dae-cnn --version 1 \
		--out $(DEMO)/saved_models --overwrite
	$(BIN)/tfpurify predict $(DEMO)/saved_models/dae-cnn/1 --limit 8
	@echo "report: $(DEMO)/dae/report.md (.json, .png beside it); pictures: $(DEMO)/dae/pictures/;"
	@echo "SavedModel for TF Serving: $(DEMO)/saved_models/dae-cnn/1"

# Two workers on the two cores (pytest-xdist), one test file each at a time: about half the time. Files are
# handed out in collection order (tests/conftest.py puts the longest, the distributed test, first), not xdist's
# default of the files with most tests first, which left that one test running alone at the end.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(BIN)/.installed-bench
	$(BIN)/python benchmarks/attack_throughput.py
	$(BIN)/python benchmarks/autoattack_fmnist.py

# Mutation testing (mutmut) of the modules setup.cfg's [mutmut] section names, with the fast tests it
# names; what survives, and why each survivor is kept: benchmarks/results/mutation.md. By default the
# evaluation engine, the attacks of AutoAttack and the export (about 15 minutes); a defense module one
# at a time, e.g. `make mutation MUTANTS='tfpurify.defenses.fbgan.*'` (about 40 minutes).
MUTANTS ?= tfpurify.metrics.* tfpurify.evaluation.* tfpurify.adaptive.* tfpurify.defenses.base.* \
	tfpurify.export.* tfpurify.attacks.autoattack.* tfpurify.attacks.fab.*
mutation: $(BIN)/.installed-mutation
	rm -rf mutants
	TFPURIFY_TEST_EAGER=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 \
		$(BIN)/mutmut run --max-children 2 $(foreach m,$(MUTANTS),"$(m)")
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) runs mutants *.egg-info
