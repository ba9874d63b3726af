# Conveniences; the README's two commands are ./scripts/run.sh and ./scripts/test.sh
# (no make needed on a fresh machine).
.PHONY: run test bench bootstrap clean

bootstrap:
	./scripts/bootstrap.sh

run:
	./scripts/run.sh

test:
	./scripts/test.sh $(PYTEST_ARGS)

bench: bootstrap
	.venv/bin/python bench/egress_sampler.py

clean:
	rm -rf .venv .pytest_cache build *.egg-info .run
