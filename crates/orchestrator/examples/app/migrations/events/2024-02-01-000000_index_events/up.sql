CREATE INDEX events_by_kind ON events (kind);
