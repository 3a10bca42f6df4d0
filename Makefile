# gridtrace: `make demo` and `make test` work from a fresh clone on Debian with Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install protos clean

demo: $(STAMP)
	$(BIN)/gridtrace demo

test: $(STAMP)
	scripts/install-system-deps.sh
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(BIN)/python:
	PYTHON="$(PYTHON)" scripts/ensure-python.sh
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py protos/_merkle_native.c | $(BIN)/python
	scripts/install-build-deps.sh
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

# Regenerate the checked-in protobuf/gRPC code after editing protos/*.proto.
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/readings.proto protos/ingest.proto protos/compute.proto
	rm -f protos/readings_pb2_grpc.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo-out .pytest_cache
