.PHONY: demo test ui bench install lock

install:
	./scripts/bootstrap.sh

demo: install
	.venv/bin/cv-pipeline demo

test: install
	.venv/bin/python -m pytest -ra

ui: install
	.venv/bin/cv-pipeline ui

bench: install
	.venv/bin/python benchmarks/bench_collection.py
	.venv/bin/python benchmarks/bench_cleaner.py
	.venv/bin/python benchmarks/bench_trainer_cpu.py

# Pin what .venv holds now (run after an upgrade has passed `make test`).
LOCK_HEADER = "\# Every package at the version the test suite last passed with, on Linux x86_64 and Python 3.11" \
	"\# (scripts/bootstrap.sh installs through it). To upgrade: \`pip install -U\` the package into .venv, \`make test\`," \
	"\# then \`make lock\`."
lock:
	{ printf '%s\n' $(LOCK_HEADER); .venv/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
