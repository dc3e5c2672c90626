alter table users
    alter column username drop not null;
