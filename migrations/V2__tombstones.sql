-- A DELETE leaves a tombstone instead of removing the row. With the version
-- set to the largest bigint, no write-behind flush of the deleted record
-- (from any instance, however late) can bring it back: the upsert guard
-- compares (created_at, version), so only a record created after the delete
-- replaces the tombstone. Tombstones expire like records and are purged by
-- cleanup.
ALTER TABLE progress ADD COLUMN deleted boolean NOT NULL DEFAULT false;
