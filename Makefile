# The two commands the README promises (run as root):
#   make demo   set everything up, then run the default experiment on the local testbed
#   make test   set everything up, then run the test suite
#   make model  rebuild the shipped AQM-LLM model and its student from the committed pool
.PHONY: setup demo test lint bench mutate clean model

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -rs tests

model: setup
	.venv/bin/testbed train --config models/aqm-llm-anchored/train.yaml
	.venv/bin/testbed train --config models/aqm-llm-coupled/train.yaml
	.venv/bin/testbed distill --config models/aqm-llm-coupled-student/distill.yaml

lint: setup
	.venv/bin/ruff check .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done

mutate: setup
	.venv/bin/python scripts/mutate.py

# Only the testbed named by TESTBED (make clean TESTBED=demo): on a shared machine other
# people's testbeds are not this checkout's to remove.
clean:
	@if [ -n "$(TESTBED)" ]; then .venv/bin/testbed down "$(TESTBED)"; \
	else echo "make clean removes no testbed unless named: make clean TESTBED=NAME (see: .venv/bin/testbed status)"; fi
