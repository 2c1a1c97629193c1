# mailsync — see README.md. `make test` and `make demo` install what they need.
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
PKGS := ./...

.PHONY: all build deps test test-short vet staticcheck fmt-check bench churn cluster demo clean

all: build

deps:
	@bash scripts/install-deps.sh

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/mailsync ./cmd/mailsync

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Static analysis beyond vet, at a pinned version fetched through the Go
# module proxy into bin/ on first use.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := bin/staticcheck-$(STATICCHECK_VERSION)
$(STATICCHECK):
	@mkdir -p bin/.sc
	GOBIN=$(CURDIR)/bin/.sc $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv bin/.sc/staticcheck $@

staticcheck: $(STATICCHECK)
	$(STATICCHECK) $(PKGS)

test: deps fmt-check vet staticcheck
	$(GO) test -race -count=1 -timeout 25m $(PKGS)

# The fast tier: pure logic only (decisions, plans, the aliases model,
# validation, rendering); every test that needs a server skips itself.
test-short:
	$(GO) test -short -count=1 $(PKGS)

bench: deps churn
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout 60m $(PKGS)

# The full churn run (300 users, 3,000 changes, 16 SIGKILLs); `make test`
# runs a short one.
churn: deps
	MAILSYNC_CHURN_FULL=1 $(GO) test -count=1 -run '^TestChurnWithKills$$' -timeout 60m -v ./handlers/mailbox/

# The full cluster run: 5,000 directory changes on a 3-node JetStream
# cluster with two node kills; `make test` runs 1,000.
cluster: deps
	MAILSYNC_CLUSTER_CHANGES=5000 $(GO) test -count=1 -run '^TestClusterBurstWithKills$$' -timeout 30m -v ./internal/cluster/

demo: deps build
	@bash scripts/demo.sh

clean:
	rm -rf bin
