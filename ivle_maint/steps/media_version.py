"""media-version: browsers fetch the new static files, not cached old ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import release_needs
from ..cluster.media import agree, check_claim
from ..context import (
    AFTER,
    SLAVE,
    Check,
    Metric,
    Outcome,
    PlanLines,
    PlanPart,
    PreflightStage,
    Step,
    SummaryPart,
    UpgradeContext,
)
from ..gates.rewrite import prove_replaceable
from ..media.preflight import check_media, plan_line
from ..media.version import MEDIA_RECORD, change_media_version


def skip_why(ctx: UpgradeContext) -> str:
    needs = release_needs.of(ctx)
    return "" if needs.media else needs.reason(release_needs.MEDIA)


def media_version(ctx: UpgradeContext) -> Outcome:
    why = skip_why(ctx)  # browsers' cached static files are still right
    if why:
        return release_needs.skipped(why)
    # The value derives from NEW and the record of values used, the same on
    # every node; upgrade_id only makes a rerun reuse its own value.  In a
    # cluster, the slaves first agree on it in the database (cluster/media.py).
    agree(ctx)
    result = change_media_version(ctx.settings, ctx.new, upgrade=ctx.upgrade_id)
    return Outcome(result.summary, {"media_old": result.old, "media_new": result.new})


def check_media_record(ctx: UpgradeContext) -> None:
    prove_replaceable(ctx.settings.path_of("state") / MEDIA_RECORD,
                      "the record of media versions")


def plan_lines(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return [] if skip_why(ctx) else [plan_line(ctx)]


def skip_plan(ctx: UpgradeContext, migrations_source: str | None) -> list[str]:
    return release_needs.plan_lines(STEP.name, skip_why(ctx))


def show_change(new: Any, metrics: Mapping[str, Any]) -> str | None:
    if release_needs.SKIPPED in metrics:
        return None
    return f"{metrics.get('media_old') or '(unset)'} -> {new or '(unset)'}"


STEP = Step("media-version", "change the media version", SLAVE, AFTER, media_version,
            checks=(Check(PreflightStage.IVLE_CONF, check_media),
                    Check(PreflightStage.STATE_FILES, check_media_record),
                    Check(PreflightStage.CLUSTER, check_claim)),
            plan=(PlanLines(PlanPart.WEB, plan_lines), PlanLines(PlanPart.SKIPPED, skip_plan)),
            metrics=(Metric("media_new", "media version", SummaryPart.DONE, show_change,
                            when_done=True),))
