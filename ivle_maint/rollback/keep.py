"""Taking an upgrade's restore point, piece by piece, where each piece is
as it should be kept (rollback/point.py says what and when)."""

from __future__ import annotations

import logging
import os

from .. import system
from ..context import UpgradeContext
from ..db import pins
from ..db.marker import applied, exists
from ..db.migrations import release_classes
from ..db.session import session
from ..errors import MaintError
from ..gates import trusted
from ..gates.mounted import refuse_mounts_in
from ..gates.rewrite import fsync_dir
from ..gates.text import ivle_maint
from ..versions import is_downgrade
from .fingerprint import schema_fingerprint
from .old_package import NotInstalled, keep_installed
from .point import RestorePoint, open_point, slug
from .trees import remove_tree, tail

log = logging.getLogger(__name__)

IVLE_CONF = "ivle.conf"
SETTINGS = "ivle-maint.conf"


def point_of(ctx: UpgradeContext) -> RestorePoint | None:
    """The restore point this upgrade keeps; None for a rollback (it goes
    back to one), a first install and a reinstall (nothing to go back to)."""
    if not ctx.old or not ctx.upgrade_id or ctx.rollback is not None \
            or not is_downgrade(ctx.new, ctx.old):
        return None
    return open_point(ctx.settings, ctx.upgrade_id, ctx.old, ctx.new)


def prepare(ctx: UpgradeContext) -> RestorePoint | None:
    """Before anything stops: the files and the installed package."""
    point = point_of(ctx)
    if point is None:
        return None
    if ctx.package and point.package_name != ctx.package:
        point.update(lambda p: setattr(p, "package_name", ctx.package))
    point.keep_file(IVLE_CONF, ctx.ivle_conf.path, trusted.IVLE_CONF)
    point.keep_file(SETTINGS, ctx.settings.path, trusted.SETTINGS)
    if point.package is None and ctx.package and not ctx.code_is_new:
        _keep_package(ctx, point)
    return point


def _keep_package(ctx: UpgradeContext, point: RestorePoint) -> None:
    try:
        kept = keep_installed(ctx.package, point.directory, ctx.reporter)
    except NotInstalled as exc:  # a source install: nothing to keep
        log.info("no package kept: %s", exc)
        return
    except MaintError as exc:  # the upgrade goes on: a rollback can still use apt
        ctx.reporter.warn(f"{exc}; '{ivle_maint('rollback')}' will install {ctx.package} "
                          f"{ctx.old} from the repository instead")
        return
    point.update(lambda p: setattr(p, "package", kept.to_json()))


def database_before(ctx: UpgradeContext) -> None:
    """With writes stopped, before the first migration: the marker's keys,
    the pending migrations' classes and the schema's fingerprint."""
    point = point_of(ctx)
    if point is None or point.marker is not None:
        return
    classes = {c.key: c.cls for c in release_classes(ctx.settings, migrations_dir=ctx.migrations,
                                                     accept_class=ctx.accept_class)}
    with session(ctx.settings, ctx.reporter, ctx.resume) as s:
        keys = sorted(applied(s.conn)) if exists(s.conn) else []
        schema = schema_fingerprint(s.conn)

    def record(p: RestorePoint) -> None:
        if p.marker is None:  # the first run's: a rerun's marker has this upgrade's keys
            p.marker, p.classes, p.schema = keys, classes, schema

    point.update(record)


def database_dump(ctx: UpgradeContext) -> None:
    """The upgrade's first dump (db/pins.py), held for the point: called
    whether the migrations succeeded or not (a failed one is when a
    rollback is wanted)."""
    point = point_of(ctx)
    if point is None or point.dump is not None or not ctx.settings["database"]["backup"]:
        return
    dump = pins.first_dump(ctx.settings.path_of("backup"), ctx.upgrade_id)
    if dump is None:
        return
    try:
        point.record_dump(dump)
    except (MaintError, OSError) as exc:  # never in the way of the migrations' own error
        ctx.reporter.warn(f"the restore point could not hold {dump}: {exc}")


def template_aside(ctx: UpgradeContext) -> None:
    """Before the rebuild rewrites it: the template kept beside itself as
    hard links (cp -al: no block copied; rsync replaces a file by renaming
    a new one over it, so the kept links keep the old content)."""
    point = point_of(ctx)
    if point is None or point.template is not None:
        return
    template = ctx.ivle_conf.jail_template
    if not template.is_dir():
        return
    # A jail mounted (or propagated) into the template: hard links would
    # take students' files into the kept copy, or fail across devices.
    refuse_mounts_in(template, "could not keep the jail template for the restore point")
    aside = template.with_name(f"{template.name}.restore-{slug(point.upgrade)}")
    partial = aside.with_name(aside.name + ".partial")
    for leftover in (partial, aside):  # a killed run's: made again
        if leftover.exists() or leftover.is_symlink():
            remove_tree(leftover)
    done = system.run(["cp", "-a", "-l", "--", str(template), str(partial)])
    if not done.ok:
        remove_tree(partial)
        raise MaintError(f"could not keep the jail template for the restore point "
                         f"(cp -al {template}): {tail(done)}")
    os.rename(partial, aside)
    fsync_dir(aside.parent)
    # Its inode: after a rollback renames it back, the check knows it is this one.
    kept = {"path": str(template), "aside": str(aside), "inode": str(os.lstat(aside).st_ino)}
    point.update(lambda p: setattr(p, "template", kept))
