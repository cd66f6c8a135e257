-- cxrd PostgreSQL roles: the database itself keeps the audit trail append-only.
--
-- Order (see docs/compliance.md):
--   1. As the OWNER role (the one that will own the tables, e.g. `cxrd_owner`), create the schema:
--        CXRD_STORAGE__DATABASE_URL=postgresql+psycopg://cxrd_owner:...@db/cxrd cxrd init
--      (runs `storage.db.migrate`; tables belong to the owner).
--   2. As the owner (or a superuser), in the cxrd database, run this script:
--        psql -v ON_ERROR_STOP=1 -d cxrd -f deploy/postgres-roles.sql
--   3. Give the two roles passwords (or map them in pg_hba/pg_ident):
--        ALTER ROLE cxrd_app PASSWORD '...';  ALTER ROLE cxrd_compliance PASSWORD '...';
--   4. Run the service with database_url = postgresql+psycopg://cxrd_app:...@db/cxrd.
--      Give compliance staff's SQL tools cxrd_compliance.
--   5. After every upgrade, run `cxrd init` as the owner again (new migrations), then this script again:
--      it is idempotent and grants on tables a migration added.
--
-- cxrd_app:        full rights on the working tables (instances, jobs, predictions, results, ...),
--                  but only SELECT and INSERT on audit_events: UPDATE, DELETE and TRUNCATE are refused
--                  by the server, so even a compromised service cannot rewrite history. (The keyed hash
--                  chain still detects edits by the owner or a superuser: `cxrd audit verify`.)
-- cxrd_compliance: SELECT on audit_events only.
-- Neither role owns anything or may create objects; only the owner runs migrations.

\set ON_ERROR_STOP 1

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxrd_app') THEN
        CREATE ROLE cxrd_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxrd_compliance') THEN
        CREATE ROLE cxrd_compliance LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

-- Nobody gets anything by default (PUBLIC), in this schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO cxrd_app, cxrd_compliance;

-- The service: everything on the working tables and their sequences ...
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cxrd_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO cxrd_app;
-- ... but the schema version is the owner's business (the service only reads it at start) ...
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM cxrd_app;
-- ... and the audit trail is append-only.
REVOKE ALL ON audit_events FROM cxrd_app;
GRANT SELECT, INSERT ON audit_events TO cxrd_app;

-- Compliance: read the audit trail, nothing else.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM cxrd_compliance;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM cxrd_compliance;
GRANT SELECT ON audit_events TO cxrd_compliance;
