DROP INDEX events_by_kind;
