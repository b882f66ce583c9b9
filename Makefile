# Shortcuts for a fresh clone. The build itself is CMake (scripts/build.sh); this file only
# names the common entry points. Everything that touches the kernel needs root.
#
#   make demo     install what is missing, build, run the eight Istio tasks on a local
#                 cluster and print the report (scripts/tasks.sh; docs/tasks.md)
#   make build    install what is missing and build (./build, or BUILD_DIR)
#   make test     the whole test suite (scripts/test.sh)
#   make tasks    the tasks only, against an existing build (TASKS="--task 7 --keep")

.PHONY: demo build test tasks

demo: build
	scripts/tasks.sh $(TASKS)

build:
	scripts/build.sh

test:
	scripts/test.sh

tasks:
	scripts/tasks.sh $(TASKS)
