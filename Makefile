.PHONY: demo test ui bench install

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
