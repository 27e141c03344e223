/* Tutors see the students of the offerings they tutor.
   /* Nested comments are fine in PostgreSQL; so is a ';' in here. */
   This line still belongs to the outer comment; really. */
CREATE FUNCTION tutor_students(tutor VARCHAR) RETURNS SETOF VARCHAR AS $fn$
    SELECT s.login
      FROM login t
      JOIN enrolment te ON te.loginid = t.loginid AND te.role = 'tutor'
      JOIN enrolment se ON se.offeringid = te.offeringid AND se.role = 'student'
      JOIN login s ON s.loginid = se.loginid
     WHERE t.login = tutor
     ORDER BY 1;  -- the ';' ends the function's statement, not the file's
$fn$ LANGUAGE sql STABLE;

INSERT INTO subject (subj_code, subj_name, subj_short_name)
    VALUES ('INFO20003', E'Programmers\' Pleasures; Part 1', 'pp1');
