-- ivle-maint: no-transaction
-- Building this index must not lock the login table in the middle of term,
-- so it runs outside a transaction (CREATE INDEX CONCURRENTLY).
CREATE INDEX CONCURRENTLY login_email_idx ON login (email);
