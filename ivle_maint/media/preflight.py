"""The media-version step's preflight and plan: ivle.conf and the record of
media versions parsed, the value computed, and where it writes proved
writable (the rule: ivle_maint/preflight.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MaintError
from ..gates.rewrite import check_rewritable, existing_parent, prove_writable
from .version import plan_media_version

if TYPE_CHECKING:
    from ..context import UpgradeContext


def check_media(ctx: UpgradeContext) -> None:
    """ivle.conf and the record parsed, the value computed, and where the
    step writes really writable."""
    settings = ctx.settings
    conf = settings.ivle_conf_dir / "ivle.conf"
    force = bool(settings["media"]["force"])
    plan = plan_media_version(conf, settings.path_of("state"), ctx.new, force=force)
    if plan.target is None:  # left alone: nothing is written
        return
    check_rewritable(conf)  # replaced whole: no symlink, no hard link to split
    real = Path(os.path.realpath(conf)).parent
    try:
        prove_writable(real)
    except OSError as exc:
        raise MaintError(
            f"{real}: ivle.conf cannot be rewritten there ({exc.strerror}), so the media "
            "version could not change: make it writable (or leave [media] version unset)"
        ) from None
    backup = settings.path_of("backup")
    try:
        prove_writable(backup)
    except OSError as exc:
        raise MaintError(
            f"{existing_parent(backup)}: the copy of ivle.conf cannot be written there "
            f"({exc.strerror}): make it writable"
        ) from None


def plan_line(ctx: UpgradeContext) -> str:
    """What the step would set the media version to."""
    settings = ctx.settings
    media = plan_media_version(
        settings.ivle_conf_dir / "ivle.conf", settings.path_of("state"), ctx.new,
        upgrade=f"{ctx.old}->{ctx.new}", force=bool(settings["media"]["force"]),
    )
    if media.target is None:
        return "media version: not set in ivle.conf, left alone"
    return f"media version: {media.current} -> {media.target}"
