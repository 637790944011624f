-- A credential is a bearer token or a capability (a secret path segment, as Outline's
-- management API uses); one is never accepted as the other.
ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'token';
