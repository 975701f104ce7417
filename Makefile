# qtunnel — the two commands are 'make demo' and 'make test'.
GO        ?= go
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2
PKGS      := ./...

.PHONY: all build demo test test-short lint fmt vet staticcheck bench bench-quick bench-micro fuzz screenshots clean

all: build

## build: bin/tunnel, stamped with $(VERSION) (tunnel version), as make dist stamps.
build:
	$(GO) build -ldflags "-X $(VERSION_PKG).Version=$(VERSION)" -o bin/tunnel ./cmd/tunnel

## demo: run a server, a client and two sample upstreams on loopback; prints what to curl.
## It runs the built binary, not 'go run': go run exits 1 whenever it gets
## SIGINT, so Ctrl-C would end make demo with "Error 1" after a clean stop.
demo: build
	bin/tunnel demo

## test: every check and every test (race detector on, goroutine leaks checked).
test: lint
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## test-short: the tests without the long end-to-end transfers.
test-short:
	$(GO) test -race -count=1 -short $(PKGS)

# h2spec v2.3.0 and later name their module without the /v2 suffix, so `go
# install` cannot fetch them; v2.2.1 is the newest it can (docs/H2SPEC.md).
H2SPEC_VERSION := v2.2.1+incompatible

.PHONY: h2spec
## h2spec: the h2spec HTTP/2 conformance suite against the server's public listeners (h2c and TLS), checked against docs/H2SPEC.md; installs bin/h2spec if missing.
h2spec: bin/h2spec
	H2SPEC=$(CURDIR)/bin/h2spec $(GO) test -count=1 -run TestH2Spec -v ./e2e

bin/h2spec:
	GOBIN=$(CURDIR)/bin $(GO) install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck:
	$(GO) run $(STATICCHECK) $(PKGS)

## bench: the load harness (cmd/tunnel-bench, a command of its own so that
## bin/tunnel links no load generator), tunnel vs direct vs raw quic-go,
## medians of 3 runs (about 8 minutes); writes
## bench/results/{results.json,chart.svg,*.log}.
bench:
	$(GO) run ./cmd/tunnel-bench -runs 3 -out bench/results

## bench-quick: the same scenarios in under a minute, for spot checks.
bench-quick:
	$(GO) run ./cmd/tunnel-bench -quick -out bench/out

## bench-micro: hot-path micro-benchmarks with allocations.
bench-micro:
	$(GO) test -run XXX -bench . -benchmem ./codec/... ./pipeline/... ./transport/... ./stages/... ./gateway/...

# FUZZTIME is how long each fuzz target runs. A new input is minimised
# before fuzzing goes on, for up to a minute by default, which can eat a
# whole run; FUZZMINIMIZETIME keeps most of each run for new inputs.
FUZZTIME         ?= 30s
FUZZMINIMIZETIME ?= 5s

## fuzz: every Fuzz* target of every package, one at a time, $(FUZZTIME) each
## (about 15 minutes), then each one's execs; stops at the first failure, whose
## input go test saves under testdata/fuzz/<target>/. make test runs only the seeds.
fuzz:
	@list=$$($(GO) test -list '^Fuzz' $(PKGS)) || { echo "$$list"; exit 1; }; \
	targets=$$(echo "$$list" | awk '/^Fuzz/ { n[++k] = $$1 } /^ok / { for (i = 1; i <= k; i++) print $$2 "," n[i]; k = 0 }'); \
	out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; : > "$$out/summary"; \
	for t in $$targets; do \
		pkg=$${t%,*}; name=$${t#*,}; \
		echo "== $$pkg $$name"; \
		{ $(GO) test $$pkg -run XXX -fuzz "^$$name$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME); echo $$? > "$$out/rc"; } 2>&1 | tee "$$out/log"; \
		[ "$$(cat "$$out/rc")" = 0 ] || exit 1; \
		echo "$$pkg $$name: $$(grep '^fuzz: elapsed' "$$out/log" | tail -n 1)" >> "$$out/summary"; \
	done; \
	echo; echo "fuzz: every target ran $(FUZZTIME) without a failure:"; cat "$$out/summary"

# screenshots: the admin page's screenshots the README shows, taken by the
# browser test in a headless Chromium (apt-get install chromium).
screenshots:
	QTUNNEL_SCREENSHOTS=$(CURDIR)/docs/screenshots go test -count=1 -run TestDashboardAndInspectorInABrowser ./e2e

clean:
	rm -rf bin

# Release builds (docs/DEPLOY.md). VERSION is what `tunnel version` prints:
# git describe names the commit unless given (make dist VERSION=v1.2.3).
VERSION   ?= $(shell (git describe --tags --always --dirty) 2>/dev/null || echo dev)
DIST      ?= dist
PLATFORMS ?= linux/amd64 linux/arm64 darwin/arm64
IMAGE     ?= qtunnel
VERSION_PKG := github.com/qtunnel/qtunnel/internal/version

.PHONY: dist image
## dist: static (CGO_ENABLED=0), -trimpath, version-stamped binaries for
## $(PLATFORMS) as $(DIST)/tunnel-OS-ARCH, and $(DIST)/SHA256SUMS (sha256sum -c).
dist:
	@v='$(VERSION)'; [ -n "$$v" ] || v=dev; \
	mkdir -p '$(DIST)'; names=; \
	for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; name=tunnel-$$os-$$arch; \
		echo "dist: $(DIST)/$$name ($$v)"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath \
			-ldflags "-s -w -X $(VERSION_PKG).Version=$$v" \
			-o '$(DIST)'/$$name ./cmd/tunnel || exit 1; \
		names="$$names $$name"; \
	done; \
	cd '$(DIST)' && if command -v sha256sum >/dev/null; then sha256sum $$names; \
		else shasum -a 256 $$names; fi > SHA256SUMS && cat SHA256SUMS

## image: the container image $(IMAGE):$(VERSION) from the Dockerfile; needs a Docker engine.
image:
	@v='$(VERSION)'; [ -n "$$v" ] || v=dev; \
	docker build --build-arg VERSION="$$v" -t '$(IMAGE)':"$$v" .
