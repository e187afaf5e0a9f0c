# dmsnap — see README.md. Every target installs what it needs.
SHELL := /bin/bash
GO ?= go
VM_EXEC := $(CURDIR)/hack/vm/exec
PKG ?= ./...
FUZZTIME ?= 10000x
export CGO_ENABLED := 0

.PHONY: all build build-test test lint unit host-deps fuzz test-vm test-powercut test-systemd soak vm-setup demo bench install uninstall deb deb-test clean

all: build

LDFLAGS = -X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)

# The release binary: no crash points (session/crashpoint_off.go).
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/dmsnap ./cmd/dmsnap

# The test binary: the release one plus the crash points that
# DMSNAP_CRASHPOINT arms (build tag crashpoints), which the crash tests need
# and a release must not have. hack/vm/exec installs it in the guest as
# /usr/bin/dmsnap in place of bin/dmsnap when it is there.
build-test:
	$(GO) build -trimpath -tags crashpoints -ldflags "$(LDFLAGS)" -o bin/dmsnap-test ./cmd/dmsnap

# The README's test command: lint, host unit tests, a short fuzz run, the
# .deb installed and removed with apt, then the VM suite on the real kernel.
test: lint unit fuzz deb-test test-vm test-powercut test-systemd

# Both builds of the crash points: the release one (no tag) and the test
# one (vm,crashpoints, as test-vm builds; it holds every file the tag
# crashpoints alone would).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vm,crashpoints ./...
	$(GO) vet -tags vmhost ./cmd/dmsnap/
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags vm,crashpoints ./...
	$(GO) tool staticcheck -tags vmhost ./cmd/dmsnap/

# The release build's tests, then the crash points' own in the test build.
unit: host-deps
	$(GO) test -count=1 $(PKG)
	$(GO) test -count=1 -tags crashpoints ./session/

# Debian packages the host tests need (bash-completion, man-db, systemd).
host-deps:
	hack/host-deps.sh

fuzz:
	hack/fuzz.sh $(FUZZTIME)

vm-setup:
	hack/vm/setup.sh
	flock hack/vm/.cache/.lock hack/vm/mkinitramfs.sh >/dev/null

# Packages with VM tests (files tagged vm); the others' tests ran on the host.
VM_PKGS = $(if $(filter ./...,$(PKG)),$(shell grep -rl --include='*_test.go' '^//go:build vm' . | xargs -n1 dirname | sort -u | sed 's|$$|/|'),$(PKG))

# One guest per package; -p 1 because the machine has two cores and each
# guest uses both. The guest's dmsnap is the test binary (crash points), and
# so are the test binaries run in it.
test-vm: build-test vm-setup
	$(GO) test -count=1 -p 1 -timeout 40m -tags vm,crashpoints -exec $(VM_EXEC) $(VM_PKGS)

# A guest power cut mid-write over virtio disks backed by host files, and a
# second boot that attaches and restores (cmd/dmsnap/powercut_host_test.go).
# The test runs on the host and boots the guest twice, with the release
# binary: a power cut needs no crash points.
test-powercut: build vm-setup
	$(GO) test -count=1 -tags vmhost -run TestPowerCut -v ./cmd/dmsnap/

# Two boots of a guest under systemd and udev (Debian 12's, on a root disk
# made by hack/vm/systemd-root.sh): the udev rule's hand-off, the units'
# ordering and hardening (cmd/dmsnap/systemd_host_test.go).
test-systemd: build vm-setup
	$(GO) test -count=1 -timeout 20m -tags vmhost -run TestSystemdBoot -v ./cmd/dmsnap/

# The long tier: the full matrix with random seeds, the crash test over
# several rounds, the bad-input sweeps and repeated power cuts, with counts
# (SOAK_ROUNDS, SOAK_POWERCUTS; see hack/soak.sh).
soak: build build-test vm-setup
	hack/soak.sh

demo: build vm-setup
	hack/vm/run --file bin/dmsnap:/usr/bin/dmsnap --file hack/demo.sh:/work/demo.sh -- sh /work/demo.sh

bench: build vm-setup
	hack/bench/run.sh

# The binary, the systemd unit of the watcher, the udev rule (which dmsnap
# keeps in step with its registry from then on), the man pages and the
# shell completions, under PREFIX (and DESTDIR when staging).
PREFIX ?= /usr/local
INSTALL_FILES = bin/dmsnap install-files --binary $(PREFIX)/sbin/dmsnap --prefix $(PREFIX) "$(or $(DESTDIR),/)"

install: build
	install -D -m 0755 bin/dmsnap $(DESTDIR)$(PREFIX)/sbin/dmsnap
	$(INSTALL_FILES)

# Removes what install wrote (install-files --list names it). The store and
# the state directory stay: they hold the sessions.
uninstall: build
	$(INSTALL_FILES) --list | xargs -r rm -f --
	rm -f $(DESTDIR)$(PREFIX)/sbin/dmsnap

# bin/dmsnap_<version>_<arch>.deb: the binary, the systemd units, the man
# pages and completions (hack/deb.sh); install it with apt-get install ./FILE.
deb: build
	hack/deb.sh

# Builds the .deb, installs it with apt, checks it and removes it
# (hack/deb-test.sh).
deb-test: build host-deps
	hack/deb-test.sh

clean:
	rm -rf bin
