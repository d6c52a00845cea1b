# whalewatch — see README.md. `make run` and `make test` are the two commands.
SHELL := /bin/bash
SERVICES := collector detector indexer notifier
BIN := bin
GO ?= go
# Every package of every module in go.work (patterns do not cross module roots).
PACKAGES := ./pkg/... $(foreach s,$(SERVICES),./services/$(s)/...) ./testkit/...
export CGO_ENABLED := 0
# The build's version, revision and commit time for `<service> version` and
# whalewatch_build_info (go build stamps no VCS information in workspace mode).
LINKPKG := github.com/whalewatch/whalewatch/pkg/service
VERSION_LDFLAGS := -X $(LINKPKG).linkVersion=$(shell git describe --tags --always --dirty 2>/dev/null) \
	-X $(LINKPKG).linkRevision=$(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -modified) \
	-X $(LINKPKG).linkTime=$(shell git log -1 --format=%cI 2>/dev/null)

.PHONY: run test build images lint fmt bench scorecard compose-check packages clean generate

run: build
	@scripts/run.sh

test:
	@scripts/test.sh

# Service binaries and the NATS server (built from github.com/nats-io/nats-server/v2,
# pinned in testkit/go.mod), static so they also go into FROM-scratch images.
build:
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do $(GO) build -trimpath -ldflags "$(VERSION_LDFLAGS)" -o $(BIN)/$$s ./services/$$s || exit 1; done
	@cd testkit && $(GO) build -trimpath -o ../$(BIN)/nats-server github.com/nats-io/nats-server/v2

# Container images of the services, FROM scratch with the binaries built above.
images: build
	@scripts/images.sh

# Rebuilds the kernel sensor's eBPF object and its Go bindings (committed, so
# that building needs no clang). Needs: apt-get install -y --no-install-recommends
# clang llvm libbpf-dev bpftool, and a kernel with BTF (/sys/kernel/btf/vmlinux).
generate:
	@cd services/collector && $(GO) generate ./internal/sensor/...

lint:
	@test -z "$$(gofmt -l pkg services testkit bench 2>/dev/null)" || { gofmt -l pkg services testkit bench; echo "gofmt: files above need formatting"; exit 1; }
	@$(GO) vet $(PACKAGES)

fmt:
	@gofmt -w pkg services testkit

packages:
	@echo $(PACKAGES)

# Every compose file and combination, with placeholder values for what .env must set.
COMPOSE_CHECK_ENV := SMOKE_TAG=check SLACK_PORT=1 ELASTIC_PASSWORD=check KIBANA_PASSWORD=check COLLECTOR_IDENTITY=collector-check HOST_NAME=check NATS_URL=nats://check:4222 NATS_ROUTE_PASSWORD=check
compose-check:
	@set -e; for f in docker-compose.yml "docker-compose.yml -f docker-compose.respond.yml" \
	  docker-compose.collector.yml "docker-compose.collector.yml -f docker-compose.respond.yml" \
	  "docker-compose.yml -f deploy/smoke/docker-compose.smoke.yml" "docker-compose.yml -f docker-compose.cluster.yml"; do \
	  $(COMPOSE_CHECK_ENV) docker-compose -f $$f config -q; echo "valid: -f $$f"; done

bench:
	@scripts/bench.sh

# The detection scorecard: attacks and benign workloads in real containers
# against the whole stack; rewrites its table in docs/DETECTION.md.
scorecard: build
	@cd testkit && WHALEWATCH_SCORECARD=1 WHALEWATCH_BIN=$(CURDIR)/$(BIN) WHALEWATCH_REQUIRE_DOCKER=1 \
		$(GO) test ./e2e/ -run '^TestScorecard$$' -count=1 -timeout 15m -v

.PHONY: up test-compose

# The production deployment on this host: fill in .env (the first run writes it), then make up.
up:
	@scripts/up.sh

# The compose stack as containers on this engine, with stand-ins for
# Elasticsearch, Kibana and Slack (testkit/composetest; it builds its own
# images from bin/ with deploy/Dockerfile and removes them; 1-2 minutes).
test-compose: build
	@cd testkit && WHALEWATCH_BIN=$(CURDIR)/$(BIN) WHALEWATCH_COMPOSE_SMOKE=1 $(GO) test -count=1 -timeout 15m -run TestComposeSmoke -v ./composetest/

clean:
	rm -rf $(BIN) .run
