# Convenience front for scripts/dev.sh (which also installs what is missing).
.PHONY: all build run test deps clean
all: build
build:
	bash scripts/dev.sh build
run:
	bash scripts/dev.sh run
test:
	bash scripts/dev.sh test
deps:
	bash scripts/dev.sh deps
clean:
	rm -rf build build-asan
