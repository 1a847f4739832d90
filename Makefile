# The README's two commands are `make demo` and `make test`; each works as the first command on a
# fresh machine (it runs `setup` itself).
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PKGS   := api operator planner workers protos
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup sysdeps demo up test lint typecheck pytest crds protos clean

setup: $(STAMP)

# torch is installed first and pinned, so pip takes the CPU wheel on disk instead of a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,mooncake]'
	touch $(STAMP)

# Debian packages: redis-server (the embedded stack and the tests), chromium (browser tests),
# libibverbs1 (Mooncake's transfer engine loads it even for TCP), and for the k8s_e2e tier's pod
# runner a C compiler (its network shim), wget (KubeRay's probes) and util-linux (namespaces).
sysdeps:
	@command -v redis-server >/dev/null && command -v chromium >/dev/null && \
	  command -v cc >/dev/null && command -v wget >/dev/null && command -v unshare >/dev/null && \
	  ldconfig -p | grep -q libibverbs.so.1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server chromium libibverbs1 \
	    gcc libc6-dev wget util-linux >/dev/null; }

demo: setup sysdeps
	$(BIN)/moeplane demo

up: setup sysdeps
	$(BIN)/moeplane up

test: setup sysdeps lint typecheck pytest

lint: setup
	$(BIN)/ruff check .

# mypy cannot follow setuptools' package-dir mapping, so it checks a link tree shaped like the
# installed package.
typecheck: setup
	@rm -rf .build/typecheck && mkdir -p .build/typecheck/moeplane
	@for f in moeplane/*; do ln -s ../../../$$f .build/typecheck/moeplane/; done
	@for d in $(PKGS); do ln -s ../../../$$d .build/typecheck/moeplane/$$d; done
	MYPYPATH=.build/typecheck $(BIN)/mypy --config-file pyproject.toml -p moeplane

pytest: setup sysdeps
	$(BIN)/pytest

crds: setup
	$(BIN)/moeplane crds
	$(PY) -m moeplane.codegen.chart

protos: setup
	$(PY) -m moeplane.protos.generate

clean:
	rm -rf .build .pytest_cache .mypy_cache .ruff_cache
