# whalewatch — see README.md. `make run` and `make test` are the two commands.
SHELL := /bin/bash
SERVICES := collector detector indexer notifier
BIN := bin
GO ?= go
# Every package of every module in go.work (patterns do not cross module roots).
PACKAGES := ./pkg/... $(foreach s,$(SERVICES),./services/$(s)/...) ./testkit/...
export CGO_ENABLED := 0

.PHONY: run test build images lint fmt bench scorecard compose-check packages clean

run: build
	@scripts/run.sh

test:
	@scripts/test.sh

# Service binaries and the NATS server (built from github.com/nats-io/nats-server/v2,
# pinned in testkit/go.mod), static so they also go into FROM-scratch images.
build:
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do $(GO) build -trimpath -o $(BIN)/$$s ./services/$$s || exit 1; done
	@cd testkit && $(GO) build -trimpath -o ../$(BIN)/nats-server github.com/nats-io/nats-server/v2

# Container images of the services, FROM scratch with the binaries built above.
images: build
	@scripts/images.sh

lint:
	@test -z "$$(gofmt -l pkg services testkit bench 2>/dev/null)" || { gofmt -l pkg services testkit bench; echo "gofmt: files above need formatting"; exit 1; }
	@$(GO) vet $(PACKAGES)

fmt:
	@gofmt -w pkg services testkit

packages:
	@echo $(PACKAGES)

compose-check:
	@ELASTIC_PASSWORD=check KIBANA_PASSWORD=check docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml is valid"

bench:
	@scripts/bench.sh

# The detection scorecard: attacks and benign workloads in real containers
# against the whole stack; rewrites its table in docs/DETECTION.md.
scorecard: build
	@cd testkit && WHALEWATCH_SCORECARD=1 WHALEWATCH_BIN=$(CURDIR)/$(BIN) WHALEWATCH_REQUIRE_DOCKER=1 \
		$(GO) test ./e2e/ -run '^TestScorecard$$' -count=1 -timeout 15m -v

clean:
	rm -rf $(BIN) .run
