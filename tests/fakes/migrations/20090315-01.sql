START TRANSACTION;
-- A quoted identifier with a ';' in it, and a string with '' escapes.
ALTER TABLE project ADD COLUMN "url;legacy" VARCHAR;
UPDATE project SET "url;legacy" = 'it''s; legacy' WHERE name = 'hello';
END;
