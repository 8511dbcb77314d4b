# Front door for spqr. `make demo` runs the main job on the default model,
# `make test` runs every test. Both install missing Debian packages first.
SHARED ?= $(if $(SPQR_SHARED),$(SPQR_SHARED),../shared)
MODEL  ?= $(SHARED)/models/ref-40m
JOBS   ?= $(shell nproc)
BUILD  ?= build
CMAKE_FLAGS ?=
export SPQR_SHARED := $(abspath $(SHARED))

.PHONY: all deps build test test-fast test-asan fuzz layers demo bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DSPQR_WERROR=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# everything CI checks: release tests (CUDA compiled when nvcc exists; GPU
# tests skip without a GPU), ASan+UBSan tests, a bounded fuzz run
test: layers build test-asan fuzz
	cd $(BUILD) && ctest --output-on-failure -j 1
	@echo "make test: all test suites passed"

# the include graph follows the layering (docs/ARCHITECTURE.md)
layers:
	scripts/check-layers.sh

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -LE slow

test-asan: deps
	cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DSPQR_SANITIZE=ON -DSPQR_WERROR=ON -DSPQR_CUDA=OFF >/dev/null
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -LE slow

fuzz: deps
	CC=clang cmake -S . -B $(BUILD)-fuzz -DCMAKE_BUILD_TYPE=Debug -DSPQR_FUZZ=ON -DSPQR_CUDA=OFF >/dev/null
	cmake --build $(BUILD)-fuzz -j $(JOBS) --target fuzz_container fuzz_packed fuzz_cluscomp fuzz_gguf
	mkdir -p $(BUILD)-fuzz/corpus $(BUILD)-fuzz/corpus-packed $(BUILD)-fuzz/corpus-cluscomp $(BUILD)-fuzz/corpus-gguf
	SPQR_FUZZ_SEED_DIR=$(BUILD)-fuzz/corpus $(BUILD)-fuzz/fuzz_container -runs=0 $(BUILD)-fuzz/corpus
	$(BUILD)-fuzz/fuzz_container -max_total_time=30 -rss_limit_mb=2048 $(BUILD)-fuzz/corpus
	$(BUILD)-fuzz/fuzz_packed -max_total_time=30 -rss_limit_mb=2048 $(BUILD)-fuzz/corpus-packed
	$(BUILD)-fuzz/fuzz_cluscomp -max_total_time=30 -rss_limit_mb=2048 $(BUILD)-fuzz/corpus-cluscomp
	SPQR_FUZZ_SEED_DIR=$(BUILD)-fuzz/corpus-gguf $(BUILD)-fuzz/fuzz_gguf -runs=0 $(BUILD)-fuzz/corpus-gguf
	$(BUILD)-fuzz/fuzz_gguf -max_total_time=30 -rss_limit_mb=2048 $(BUILD)-fuzz/corpus-gguf

demo: build
	@scripts/install-deps.sh --plots
	./$(BUILD)/spqr eval $(MODEL) --data $(SHARED)/data/eval/ptb_test.txt --seqlen 512
	./$(BUILD)/spqr quantize $(MODEL) --method spqr --bits 4 --group-size 16 --stat-bits 3 \
	    --stat-group-size 16 --outlier-threshold 0.2 --calib $(SHARED)/data/calib/corpus_calib.txt \
	    --nsamples 128 --seqlen 512 -o $(BUILD)/ref-40m-spqr.spqr
	./$(BUILD)/spqr inspect $(BUILD)/ref-40m-spqr.spqr
	./$(BUILD)/spqr eval $(BUILD)/ref-40m-spqr.spqr --data $(SHARED)/data/eval/ptb_test.txt --seqlen 512

bench: build
	./$(BUILD)/bench_prefill $(MODEL) 512
	./$(BUILD)/bench_kernels
	/usr/bin/time -v ./$(BUILD)/spqr quantize $(MODEL) --method spqr --outlier-threshold 0.2 \
	    --calib $(SHARED)/data/calib/corpus_calib.txt --nsamples 128 --seqlen 512 -o $(BUILD)/bench.spqr --quiet
	./$(BUILD)/bench_e2e $(MODEL) $(BUILD)/bench.spqr 512 128

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz
