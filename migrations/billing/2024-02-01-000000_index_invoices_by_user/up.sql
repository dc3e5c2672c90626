CREATE INDEX invoices_user_id ON invoices (user_id);
