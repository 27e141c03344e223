"""media-version: browsers fetch the new static files, not cached old ones."""

from __future__ import annotations

from ..cluster.media import agree
from ..context import AFTER, SLAVE, Outcome, Step, UpgradeContext
from ..media.version import change_media_version


def media_version(ctx: UpgradeContext) -> Outcome:
    # The value derives from NEW and the record of values used, the same on
    # every node; upgrade_id only makes a rerun reuse its own value.  In a
    # cluster, the slaves first agree on it in the database (cluster/media.py).
    agree(ctx)
    result = change_media_version(ctx.settings, ctx.new, upgrade=ctx.upgrade_id)
    return Outcome(result.summary, {"media_old": result.old, "media_new": result.new})


STEP = Step("media-version", "change the media version", SLAVE, AFTER, media_version)
