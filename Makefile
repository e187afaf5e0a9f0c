# dmsnap — see README.md. Every target installs what it needs.
SHELL := /bin/bash
GO ?= go
VM_EXEC := $(CURDIR)/hack/vm/exec
PKG ?= ./...
FUZZTIME ?= 10000x
export CGO_ENABLED := 0

.PHONY: all build test lint unit fuzz test-vm test-powercut soak vm-setup demo bench install clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/dmsnap ./cmd/dmsnap

# The README's test command: lint, host unit tests, a short fuzz run, then the
# VM suite on the real kernel.
test: lint unit fuzz test-vm test-powercut

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vm ./...
	$(GO) vet -tags vmhost ./cmd/dmsnap/
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags vm ./...
	$(GO) tool staticcheck -tags vmhost ./cmd/dmsnap/

unit:
	$(GO) test -count=1 $(PKG)

fuzz:
	hack/fuzz.sh $(FUZZTIME)

vm-setup:
	hack/vm/setup.sh
	flock hack/vm/.cache/.lock hack/vm/mkinitramfs.sh >/dev/null

# Packages with VM tests (files tagged vm); the others' tests ran on the host.
VM_PKGS = $(if $(filter ./...,$(PKG)),$(shell grep -rl --include='*_test.go' '^//go:build vm' . | xargs -n1 dirname | sort -u | sed 's|$$|/|'),$(PKG))

# One guest per package; -p 1 because the machine has two cores and each
# guest uses both.
test-vm: build vm-setup
	$(GO) test -count=1 -p 1 -timeout 40m -tags vm -exec $(VM_EXEC) $(VM_PKGS)

# A guest power cut mid-write over virtio disks backed by host files, and a
# second boot that attaches and restores (cmd/dmsnap/powercut_host_test.go).
# The test runs on the host and boots the guest twice.
test-powercut: build vm-setup
	$(GO) test -count=1 -tags vmhost -run TestPowerCut -v ./cmd/dmsnap/

# The long tier: the full matrix with random seeds, the crash test over
# several rounds, the bad-input sweeps and repeated power cuts, with counts
# (SOAK_ROUNDS, SOAK_POWERCUTS; see hack/soak.sh).
soak: build vm-setup
	hack/soak.sh

demo: build vm-setup
	hack/vm/run --file bin/dmsnap:/usr/bin/dmsnap --file hack/demo.sh:/work/demo.sh -- sh /work/demo.sh

bench: build vm-setup
	hack/bench/run.sh

# The binary, the systemd unit of the watcher and the udev rule (which dmsnap
# keeps in step with its registry from then on).
install: build
	install -D -m 0755 bin/dmsnap $(DESTDIR)/usr/local/sbin/dmsnap
	bin/dmsnap install-files --binary /usr/local/sbin/dmsnap "$(or $(DESTDIR),/)"

clean:
	rm -rf bin
