# ivle-maint developer targets.  Everything runs as root on Debian bookworm
# and installs what it needs first (scripts/install-deps).
PY := /usr/bin/python3
PYTEST := $(PY) -m pytest

.PHONY: all deps test suites systems bytecode test-debian test-pypi lint bench demo deb e2e autopkgtest booted clean

all: test

deps:
	scripts/install-deps --packaging

# The test command (README.md, .ci/run), in stages timed by
# scripts/timed-stages (a table at the end): lint, the suite on Debian's
# python3-* libraries beside the unit and integration tests (the ones that
# drive psycopg2, configobj, sh, python-debian and psutil through our code)
# on the newest PyPI releases, then the .deb through real dpkg and apt in a
# chroot beside booted nodes (systems).  Each suite runs in XDIST workers (pytest-xdist;
# every worker has its own mount namespace, PostgreSQL, $$TMPDIR, users'
# unixids and ports: tests/conftest.py): the tests mostly wait on
# PostgreSQL, processes and timeouts, so four workers keep the two cores
# busy.  Debian's suite is the long one (the abuse tests and the sandbox
# clusters run there only: about 2000 s of tests against about 500 s), so
# it has three of them and the PyPI suite one: 1323 s for the stage with
# two each, on the 2-core CI machine.  --output-sync prints each suite's
# output whole, its closing "N passed" line last.
XDIST_DEBIAN := -n 3
XDIST_PYPI := -n 1
test:
	scripts/timed-stages deps lint suites systems

suites:
	$(MAKE) -j2 --output-sync=target test-debian test-pypi

# The tests start thousands of Python processes (ivle-maint, its hooks, the
# stand-ins), each importing ivle_maint; where PYTHONDONTWRITEBYTECODE is
# set (as on the CI machine) none writes its bytecode, and each compiles
# every module again: about 0.2 s of CPU a process.  Compiled once here,
# with the stand-ins' library and the test support modules those processes
# import (tests/fakes/_fakelib.py, tests/support/).
bytecode:
	$(PY) -m compileall -q ivle_maint scripts tests

test-debian: bytecode
	$(PYTEST) $(XDIST_DEBIAN) tests/unit tests/integration tests/abuse

# tests/abuse tests our gates against hostile input, and the tests marked
# `once` packaging, several nodes, the harness or ivle-maint's own long
# scenarios, not the libraries' behaviour: they run once, on Debian's
# libraries (test-debian).
test-pypi: bytecode
	$$(scripts/pypi-venv) -m pytest $(XDIST_PYPI) -m "not once" tests/unit tests/integration

lint:
	venv_py=$$(scripts/pypi-venv) && \
	$$(dirname $$venv_py)/ruff check . && \
	$$(dirname $$venv_py)/mypy

# Benchmarks print their ratios (each exits 1 when it misses its target);
# the jail, upgrade and booted ones need a private mount namespace for their
# mounts.  Every script runs, missed targets or not; make fails at the end,
# naming the scripts that missed.
PRIVATE := unshare --mount --propagation private
BENCHES := bench_version bench_migrations bench_classify bench_rollback_db bench_jails \
	bench_upgrade bench_booted bench_rollback_booted bench_cluster bench_roll
bench: deps
	@missed=""; for bench in $(BENCHES); do \
	    case $$bench in bench_version|bench_migrations|bench_classify|bench_rollback_db) ns="";; \
	                    *) ns="$(PRIVATE)";; esac; \
	    echo "\$$ $${ns:+$$ns }$(PY) scripts/$$bench.py"; \
	    $$ns $(PY) scripts/$$bench.py || missed="$$missed $$bench"; \
	done; \
	if [ -n "$$missed" ]; then echo "bench: missed a target:$$missed"; exit 1; fi

demo: deps
	unshare --mount --propagation private $(PY) scripts/demo

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache .venv-pypi

# The ivle-maint .deb (and .buildinfo, .changes) in build/deb/, built from a
# copy of the working tree, lintian silent; kept while the tree is unchanged
# (scripts/build-deb).
DEB_DIR := build/deb
DEB_PATH := /usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
deb:
	scripts/install-deps --packaging
	scripts/build-deb

# The e2e and booted tests side by side, on one build of the .deb (make deb
# keeps it): each keeps a core about half busy on its own (apt, dpkg and its
# chroot's services; systemd-nspawn nodes booting), 395 and 663 CPU seconds
# for 348 and 506 s alone, so together they take less than one after the
# other.  Each has its own namespaces and cache.  --output-sync prints each
# one's output whole.  Their .deb is built without dh_auto_test (nocheck):
# the suites stage has just run its tests/unit on this very tree, on both
# sets of libraries (143 s on the CI machine); `make deb` alone runs them.
systems:
	DEB_BUILD_OPTIONS="nocheck $${DEB_BUILD_OPTIONS:-}" $(MAKE) deb
	$(MAKE) -j2 --output-sync=target e2e booted

# End-to-end: the .deb and a stand-in IVLE package through real dpkg, apt and
# init scripts in a throwaway bookworm chroot (scripts/e2e/run; needs root).
e2e:
	scripts/install-deps --packaging
	$(PYTEST) -m e2e -v -s -p no:cacheprovider tests/e2e
	$(MAKE) autopkgtest

# debian/tests against the built .debs, on a throwaway overlay of the e2e's
# cached bookworm tree (scripts/autopkgtest-run; autopkgtest-virt-chroot).
# isolation-machine tests are skipped there, as on any chroot testbed.
autopkgtest:
	test -d $(DEB_DIR)/src || $(MAKE) deb
	PATH=$(DEB_PATH) scripts/autopkgtest-run $(wildcard $(DEB_DIR)/*.deb) $(DEB_DIR)/src

# Booted nodes: real systemd, apache2 (mod_python) and PostgreSQL 15 units in
# systemd-nspawn nodes, the stand-in IVLE package built by dpkg-buildpackage,
# a client probe watching (scripts/booted; needs root).
booted:
	scripts/install-deps --packaging
	$(PYTEST) -m booted -v -s -p no:cacheprovider tests/booted
