CREATE INDEX index_crate_owners_crate_id
                           ON crate_owners (crate_id);