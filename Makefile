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
lock:
	{ sed -n '/^#/p;/^#/!q' constraints.txt; .venv/bin/python -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
