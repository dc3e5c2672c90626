ALTER TABLE teams
    DROP CONSTRAINT teams_login_lowercase_ck;
