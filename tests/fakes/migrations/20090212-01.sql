BEGIN;

-- Project names end up in repository paths: refuse what would break them.
CREATE OR REPLACE FUNCTION check_project_name() RETURNS trigger AS $$
BEGIN
    IF NEW.name ~ E'[/\\\\;]' THEN
        RAISE EXCEPTION E'project name may not contain \'/\', \'\\\\\' or \';\': %',
            NEW.name;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER project_name_check BEFORE INSERT OR UPDATE ON project
    FOR EACH ROW EXECUTE PROCEDURE check_project_name();

INSERT INTO project (offeringid, name, synopsis)
    VALUES (1, 'hello', E'Say hello;\nthen say it\'s done.');

COMMIT;
