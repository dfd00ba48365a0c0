# oncall-router: the two commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned, so pip never pulls the multi-GB CUDA build onto a CPU
# machine. GPU machine: `make TORCH_INDEX_URL=<PyTorch CUDA wheel index> demo` (see README).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PYTEST_ARGS ?=
# The production shape on this machine (README, Production): state, config and logs live here.
PROD_DIR ?= .oncall-prod
POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test unit integration model production prod-up prod-down lint format strip-notebooks bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/oncall-router demo

test: $(STAMP) lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

model: $(STAMP)
	$(BIN)/pytest -m model $(PYTEST_ARGS)

production: $(STAMP)
	$(BIN)/pytest -m production $(PYTEST_ARGS)

# A three-node Ray cluster, S3 (moto) and an MLflow server on PostgreSQL, all on loopback; then
# `source $(PROD_DIR)/prod.env` and submit jobs. `make prod-down PURGE=1` also drops the database.
prod-up: $(STAMP)
	$(BIN)/python platform/local/production.py --dir $(PROD_DIR) up --postgres-url $(POSTGRES_URL)

prod-down: $(STAMP)
	$(BIN)/python platform/local/production.py --dir $(PROD_DIR) down $(if $(PURGE),--purge)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Side-by-side benchmarks (not tests; about an hour on 2 cores): each prints its table and appends
# it to benchmarks/RESULTS.md. Without a GPU, `gpu` checks its code path at a reduced shape.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.serve --base tiny
	$(BIN)/python -m benchmarks.serve --base compute-bound
	$(BIN)/python -m benchmarks.cpu_runtime
	$(BIN)/python -m benchmarks.rescore
	$(BIN)/python -m benchmarks.train
	if $(BIN)/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; \
	then $(BIN)/python -m benchmarks.gpu; else $(BIN)/python -m benchmarks.gpu --reduced --device cpu; fi

# Notebooks are committed without outputs (a test checks it).
strip-notebooks: $(STAMP)
	$(BIN)/python notebooks/strip_outputs.py

clean:
	rm -rf .oncall .pytest_cache .ruff_cache
