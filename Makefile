# Each target sets the environment up first, so one command works on a fresh machine.
.PHONY: setup demo test bench

setup:
	./scripts/setup-env.sh

demo: setup
	.venv/bin/arpo invert arpo/examples/chelsea.jpg --models tiny --brain offline --steps 3 --out arpo-out

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python -m arpo.eval.loop_benchmark
