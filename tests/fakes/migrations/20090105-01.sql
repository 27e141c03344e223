-- Projects: work that students submit for an offering.
BEGIN;

CREATE TABLE project (
    projectid   SERIAL PRIMARY KEY,
    offeringid  INT NOT NULL REFERENCES offering (offeringid),
    name        VARCHAR NOT NULL,
    synopsis    VARCHAR,   -- shown on the subject page; may hold ';'
    deadline    TIMESTAMP
);

COMMENT ON TABLE project IS 'Work students submit; one row per assignment';

COMMIT;
