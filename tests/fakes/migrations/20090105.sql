-- Users may now ask for email about their submissions.
-- (No BEGIN/COMMIT: ivle-maint wraps this file in its transaction.)
ALTER TABLE login ADD COLUMN notify_email BOOLEAN NOT NULL DEFAULT false;
