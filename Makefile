# Two commands on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# Unprivileged defaults for `make run` (Portal's 80/443 need root): override on the command line.
WORK_DIR   ?= .work
API_PORT   ?= 8443
PROXY_HTTP ?= 127.0.0.1:8080
PROXY_TLS  ?= 127.0.0.1:8444

# Debian packages the kernel tests need (installed by `make test` when missing and root).
SYSTEM_DEPS := nftables libnftables1 iproute2 conntrack qemu-system-x86 busybox-static ipvsadm kmod cpio socat

.PHONY: install system-deps run test lint check-types unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

run: install
	@echo "portal-es: API https://127.0.0.1:$(API_PORT) (self-signed), proxy http $(PROXY_HTTP) and tls $(PROXY_TLS), log in $(WORK_DIR)/"
	$(BIN)/portal-es serve --work-dir $(WORK_DIR) --api-port $(API_PORT) \
		--proxy-http $(PROXY_HTTP) --proxy-tls $(PROXY_TLS)

system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:" $$missing; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else echo "warning: not root, cannot install:" $$missing "(kernel tests will skip)"; fi; \
	fi

lint: install
	$(BIN)/ruff check .

check-types: install
	$(BIN)/mypy portal_es projections migrations

test: system-deps lint check-types
	$(BIN)/pytest -q -p no:cacheprovider

unit: install
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) $(WORK_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
