"""dh_ivle_maint from the source tree on a small IVLE-like package, built by
dpkg-buildpackage: the generated scripts, the order against dh_installinit,
and the manifest as ivle-maint reads it (Perl writes it, Python checks it)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ivle_maint.migration_manifest import parse
from ivle_maint.services import early_calls
from support.dh_addon import GOOD_OPTIONS, build

pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(shutil.which("dh") is None or shutil.which("dpkg-buildpackage") is None,
                       reason="debhelper and dpkg-dev are not installed"),
]

MIGRATIONS = {
    "20100301-01.sql": "BEGIN;\nCREATE TABLE t (i int);\nCOMMIT;\n",
    # Non-ASCII text and shell/here-document look-alikes survive the round trip.
    "20100301-02.sql": "-- café: ça marche\nIVLE_MAINT_MIGRATIONS\nSELECT '$HOME `x`';\n",
}


def manifest_of(preinst: str) -> str:
    body = preinst.split("<<'IVLE_MAINT_MIGRATIONS'\n", 1)[1]
    return body.split("\nIVLE_MAINT_MIGRATIONS\n", 1)[0]


def test_generated_scripts_and_manifest(tmp_path):
    files = {name: text.encode() for name, text in MIGRATIONS.items()}
    files["README"] = b"not a migration\n"
    done, control = build(tmp_path, files)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "warning" not in done.stderr.lower()
    preinst = (control / "preinst").read_text()
    subprocess.run(["sh", "-n", str(control / "preinst")], check=True)
    manifest = parse(manifest_of(preinst))
    assert manifest.package == "ivle" and manifest.version == "9.9"
    assert manifest.files == MIGRATIONS  # byte for byte, README left out
    postinst = (control / "postinst").read_text()
    assert postinst.index("ivle-maint hook postinst") < postinst.index(
        "invoke-rc.d --skip-systemd-native ivle-usrmgt-server start")
    assert "restart" not in postinst
    for script in ("prerm", "postrm"):
        assert f"ivle-maint hook {script}" in (control / script).read_text()
    pre_depends = subprocess.run(["dpkg-deb", "-f", str(tmp_path / "ivle_9.9_all.deb"),
                                  "Pre-Depends"], capture_output=True, text=True,
                                 check=True).stdout
    assert "ivle-maint (>= 0.1.0)" in pre_depends and "init-system-helpers" in pre_depends


def test_the_preinst_hands_the_manifest_to_ivle_maint(tmp_path):
    done, control = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()})
    assert done.returncode == 0
    # A stand-in ivle-maint on PATH records what the preinst gives it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ivle-maint").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n')
    (bin_dir / "ivle-maint").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run(["sh", str(control / "preinst"), "upgrade", "9.8", "9.9"], env=env,
                   check=True)
    assert (tmp_path / "argv").read_text() == "hook --new-migrations - preinst upgrade 9.8 9.9\n"
    handed = parse((tmp_path / "stdin").read_text())
    assert {n: hashlib.sha256(t.encode()).hexdigest() for n, t in handed.files.items()} == {
        n: hashlib.sha256(t.encode()).hexdigest() for n, t in MIGRATIONS.items()}
    os.unlink(tmp_path / "argv")
    subprocess.run(["sh", str(control / "preinst"), "install"], env=env, check=True)
    assert (tmp_path / "argv").read_text() == "hook preinst install\n"


def test_default_installinit_options_are_warned_about(tmp_path):
    done, _ = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()}, options="")
    assert done.returncode == 0
    assert "dh_ivle_maint: warning: ivle: dh_installinit's postinst snippet" in done.stderr


HOOKS = Path(__file__).resolve().parents[2] / "scripts" / "ivle-hooks"


def test_the_scripts_ivle_maint_ships_build_without_a_warning(tmp_path):
    """The copies of /usr/share/ivle-maint/maintscript as IVLE's own scripts,
    with debhelper's default dh_installinit (a restart after the upgrade):
    each keeps its marker once, and the postinst calls ivle-maint before
    debhelper's restart (the preinst's gate finds nothing above it)."""
    scripts = {p.name: p.read_text() for p in HOOKS.iterdir()}
    done, control = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                          options="", scripts=scripts)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "#DEBHELPER#" not in done.stderr  # (the restart's own warning aside)
    order = early_calls.order((control / "postinst").read_text(), {"ivle-usrmgt-server"})
    assert order.calls_ivle_maint and order.calls == ()


@pytest.mark.parametrize(("postinst", "said"), [
    ("#!/bin/sh\n# ivle-maint before #DEBHELPER#\nivle-maint hook postinst \"$@\"\n"
     "#DEBHELPER#\nexit 0\n", "holds #DEBHELPER# 2 times (1 alone on a line)"),
    ("#!/bin/sh\nivle-maint hook postinst \"$@\"\nexit 0\n", "has no #DEBHELPER# line"),
])
def test_a_script_without_its_marker_once_alone_is_warned_about(tmp_path, postinst, said):
    done, _ = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                    scripts={"postinst": postinst})
    assert done.returncode == 0
    assert f"dh_ivle_maint: warning: ivle: debian/ivle.postinst {said}" in done.stderr


def test_a_migration_that_is_not_utf8_fails_the_build(tmp_path):
    done, _ = build(tmp_path, {"20100301-01.sql": b"SELECT '\xff';\n"})
    assert done.returncode != 0
    assert "20100301-01.sql is not UTF-8 text" in done.stderr + done.stdout


def run_postinst(tmp: Path, control: Path, *args: str) -> list[str]:
    """The built postinst, run as on a booted systemd node: stand-ins on
    PATH record every service call, and /run/systemd/system exists in a
    private mount namespace (the host's /run is left alone)."""
    bin_dir, run, log = tmp / "recorders", tmp / "run", tmp / "calls"
    bin_dir.mkdir()
    (run / "systemd/system").mkdir(parents=True)
    recorder = bin_dir / "record"
    recorder.write_text('#!/bin/sh\necho "${0##*/} $*" >> "$CALLS"\n')
    recorder.chmod(0o755)
    for name in ("ivle-maint", "deb-systemd-invoke", "deb-systemd-helper", "systemctl",
                 "invoke-rc.d", "update-rc.d"):
        (bin_dir / name).symlink_to(recorder)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(log)}
    subprocess.run(["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /run && exec "$@"',
                    str(run), "sh", str(control / "postinst"), *args], env=env, check=True)
    return log.read_text().splitlines()


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for a private /run")


@needs_root
def test_a_unit_with_plain_dh_installsystemd_is_warned_about_and_restarts_twice(tmp_path):
    done, control = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                          systemd_options="")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("dh_ivle_maint: warning: ivle: dh_installsystemd's postinst snippet restarts "
            "ivle-usrmgt-server on upgrade") in done.stderr
    assert "dh_installinit's" not in done.stderr  # its options are right: only one warning
    calls = run_postinst(tmp_path, control, "configure", "9.8")
    # What the warning is about: ivle-maint restarts usrmgt, then debhelper again.
    assert calls.index("ivle-maint hook postinst configure 9.8") < calls.index(
        "deb-systemd-invoke restart ivle-usrmgt-server.service")


@needs_root
def test_a_unit_with_the_options_is_only_started(tmp_path):
    done, control = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                          systemd_options=GOOD_OPTIONS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "warning" not in done.stderr.lower()
    assert (control / "preinst").read_text().count("deb-systemd-invoke") == 0
    calls = run_postinst(tmp_path, control, "configure", "9.8")
    service = [c for c in calls if c.startswith(("deb-systemd-invoke", "invoke-rc.d"))]
    # ivle-maint's restart (after the migrations) is the only one.
    assert service == ["deb-systemd-invoke start ivle-usrmgt-server.service"]
    assert calls.index("ivle-maint hook postinst configure 9.8") < calls.index(service[0])


def test_dh_installsystemds_preinst_stop_is_warned_about(tmp_path):
    # Restarting after the upgrade is off, stopping before it is not.
    done, control = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                          systemd_options="--no-restart-after-upgrade")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "deb-systemd-invoke stop 'ivle-usrmgt-server.service'" in (
        control / "preinst").read_text()
    assert ("dh_ivle_maint: warning: ivle: dh_installsystemd's preinst snippet stops "
            "ivle-usrmgt-server on upgrade") in done.stderr
    assert "postinst snippet" not in done.stderr


def test_the_addon_runs_after_dh_installsystemd(tmp_path):
    done, _ = build(tmp_path, {n: t.encode() for n, t in MIGRATIONS.items()},
                    systemd_options=GOOD_OPTIONS)
    assert done.returncode == 0
    order = [line.strip() for line in done.stdout.splitlines()
             if line.strip() in ("dh_installinit", "dh_installsystemd", "dh_ivle_maint")
             or "override_dh_install" in line]
    assert order.index("dh_ivle_maint") > max(
        i for i, line in enumerate(order) if "dh_installsystemd" in line)
