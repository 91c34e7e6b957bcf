-- Newest-first listing (`GET /progress`): live rows in (created_at DESC,
-- id DESC) order, optionally for one status, resuming after a cursor with
-- `(created_at, id COLLATE "C") < ($1, $2)`. Ids compare bytewise (COLLATE
-- "C"), as Redis's lex ranges and Rust do, so that a cursor continues on
-- either tier whatever the database's collation. Tombstones are never
-- listed: the indexes leave them out.
CREATE INDEX progress_listing ON progress (created_at DESC, id COLLATE "C" DESC) WHERE NOT deleted;
CREATE INDEX progress_listing_status ON progress (status, created_at DESC, id COLLATE "C" DESC) WHERE NOT deleted;
