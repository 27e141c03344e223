-- ivle-maint: empty
-- This change was folded into 20090212-02 before release; the file stays
-- so that every database records the same list of migrations.
/* Nothing to run here; */
