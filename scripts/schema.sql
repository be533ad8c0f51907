-- BookedBarber V2 tables the exporter reads, shaped like production
-- (docs/business-metrics.md): UTC timestamps without time zone, USD amounts in
-- double precision, is_test_data flags on users and appointments.
-- Used by the demo database, the tests and the benchmark.

CREATE TABLE IF NOT EXISTS users (
    id                  serial PRIMARY KEY,
    email               varchar(255) NOT NULL UNIQUE,
    role                varchar(50),
    unified_role        varchar(50),
    is_active           boolean NOT NULL DEFAULT true,
    is_test_data        boolean NOT NULL DEFAULT false,
    subscription_status varchar(50),
    created_at          timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE TABLE IF NOT EXISTS appointments (
    id               serial PRIMARY KEY,
    user_id          integer REFERENCES users(id),
    barber_id        integer REFERENCES users(id),
    client_id        integer,
    service_id       integer,
    organization_id  integer,
    service_name     varchar(255),
    start_time       timestamp without time zone NOT NULL,
    duration_minutes integer NOT NULL DEFAULT 30,
    price            double precision NOT NULL,
    status           varchar(50) NOT NULL DEFAULT 'scheduled',
    created_at       timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    is_test_data     boolean NOT NULL DEFAULT false,
    version          integer NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS payments (
    id                       serial PRIMARY KEY,
    user_id                  integer REFERENCES users(id),
    appointment_id           integer REFERENCES appointments(id),
    barber_id                integer REFERENCES users(id),
    organization_id          integer,
    amount                   double precision NOT NULL,
    status                   varchar(50) NOT NULL DEFAULT 'pending',
    stripe_payment_intent_id varchar(255),
    platform_fee             double precision NOT NULL DEFAULT 0,
    barber_amount            double precision NOT NULL DEFAULT 0,
    commission_rate          double precision NOT NULL DEFAULT 0.1,
    refund_amount            double precision NOT NULL DEFAULT 0,
    refunded_at              timestamp without time zone,
    created_at               timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at               timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE TABLE IF NOT EXISTS refunds (
    id           serial PRIMARY KEY,
    payment_id   integer NOT NULL REFERENCES payments(id),
    amount       double precision NOT NULL,
    reason       varchar(255),
    status       varchar(50) NOT NULL DEFAULT 'pending',
    created_at   timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    processed_at timestamp without time zone
);

CREATE TABLE IF NOT EXISTS payouts (
    id           serial PRIMARY KEY,
    barber_id    integer NOT NULL REFERENCES users(id),
    amount       double precision NOT NULL,
    status       varchar(50) NOT NULL DEFAULT 'pending',
    period_start timestamp without time zone NOT NULL,
    period_end   timestamp without time zone NOT NULL,
    created_at   timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    processed_at timestamp without time zone
);

CREATE TABLE IF NOT EXISTS guest_bookings (
    id             serial PRIMARY KEY,
    status         varchar(50) NOT NULL DEFAULT 'pending',
    payment_status varchar(50) NOT NULL DEFAULT 'pending',
    service_price  double precision NOT NULL,
    deposit_amount double precision NOT NULL DEFAULT 0,
    created_at     timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE INDEX IF NOT EXISTS appointments_status_idx ON appointments (status);
CREATE INDEX IF NOT EXISTS appointments_start_time_idx ON appointments (start_time);
CREATE INDEX IF NOT EXISTS appointments_created_at_idx ON appointments (created_at);
CREATE INDEX IF NOT EXISTS payments_status_idx ON payments (status);
CREATE INDEX IF NOT EXISTS payments_updated_at_idx ON payments (updated_at);
