-- The read-only role bookedbarber-exporter connects as: pg_monitor for the
-- statistics views (every session in pg_stat_activity, locks, replication),
-- SELECT on the tables the business queries read, and nothing else.
--
-- Run it with psql as a superuser or the database owner, connected to
-- BookedBarber's database, with the password as a psql variable:
--
--   psql -v exporter_password="$PASSWORD" -f exporter-role.sql
--
-- Re-running it resets the password and the grants. The variable
-- exporter_role names the role (default bookedbarber_exporter).
\set ON_ERROR_STOP on
\if :{?exporter_role}
\else
\set exporter_role bookedbarber_exporter
\endif
\if :{?exporter_password}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'exporter-role.sql: give the password: psql -v exporter_password=... -f exporter-role.sql';
END $$;
\endif

SELECT format('CREATE ROLE %I', :'exporter_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'exporter_role') \gexec

ALTER ROLE :"exporter_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    CONNECTION LIMIT 10 PASSWORD :'exporter_password';
-- Even a mistaken grant cannot turn into a write.
ALTER ROLE :"exporter_role" SET default_transaction_read_only = on;

GRANT pg_monitor TO :"exporter_role";
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'exporter_role') \gexec
GRANT USAGE ON SCHEMA public TO :"exporter_role";
-- The tables config/business-queries.toml reads.
GRANT SELECT ON TABLE users, appointments, payments, payouts, guest_bookings TO :"exporter_role";
