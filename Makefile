# The two commands of the README: `make run` and `make test`. Each bootstraps
# what it needs (Debian packages, .venv) on a fresh Debian 12 machine as root.
.PHONY: run test bench bootstrap clean

bootstrap:
	./scripts/bootstrap.sh

run: bootstrap
	./scripts/run-stack.sh

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: bootstrap
	.venv/bin/python bench/egress_sampler.py

clean:
	rm -rf .venv .pytest_cache build *.egg-info
