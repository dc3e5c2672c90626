DROP INDEX invoices_user_id;
