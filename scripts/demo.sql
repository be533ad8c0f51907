-- Demo data for a BookedBarber-shaped database: demo_seed() fills it with
-- realistic distributions, demo_tick() moves it forward a little, as a busy
-- shop day would (new bookings, confirmations, completions, payments,
-- refunds, sign-ups). Requires schema.sql.

CREATE OR REPLACE FUNCTION demo_now() RETURNS timestamp
LANGUAGE sql AS $$ SELECT (now() AT TIME ZONE 'UTC')::timestamp $$;

-- Picks a value from parallel arrays of choices and cumulative weights (0..1).
CREATE OR REPLACE FUNCTION demo_pick(choices text[], cumulative float8[], r float8) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT choices[coalesce((SELECT min(i) FROM generate_subscripts(cumulative, 1) i WHERE r < cumulative[i]),
                            array_length(choices, 1))]
$$;

CREATE OR REPLACE FUNCTION demo_seed(n_users int, n_appointments int, n_payments int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first_user int;
    n_barbers int;
BEGIN
    SELECT coalesce(max(id), 0) + 1 INTO first_user FROM users;

    INSERT INTO users (email, role, unified_role, is_active, is_test_data, subscription_status, created_at)
    SELECT 'user' || (first_user + g) || '@demo.bookedbarber.test',
           CASE WHEN r < 0.85 THEN 'client' ELSE 'barber' END,
           demo_pick(ARRAY['client','barber','shop_owner','individual_barber','shop_manager','receptionist','enterprise_owner','viewer','platform_admin'],
                     ARRAY[0.85, 0.93, 0.96, 0.98, 0.99, 0.995, 0.997, 0.999, 1.0], r),
           random() < 0.95,
           random() < 0.02,
           CASE WHEN random() < 0.3 THEN 'active' ELSE NULL END,
           demo_now() - random() * interval '365 days'
    FROM (SELECT g, random() AS r FROM generate_series(0, n_users - 1) g) s;

    CREATE TEMP TABLE demo_barbers ON COMMIT DROP AS
        SELECT row_number() OVER () AS n, id FROM users
        WHERE unified_role IN ('barber', 'individual_barber', 'shop_owner');
    SELECT count(*) INTO n_barbers FROM demo_barbers;
    IF n_barbers = 0 THEN
        RAISE EXCEPTION 'demo_seed needs at least one barber: seed more users';
    END IF;

    -- Bookings from six months ago to a month ahead; past ones have settled
    -- (mostly completed), future ones are scheduled or confirmed.
    INSERT INTO appointments (user_id, barber_id, client_id, service_id, organization_id, service_name,
                              start_time, duration_minutes, price, status, created_at, is_test_data)
    SELECT CASE WHEN random() < 0.15 THEN NULL ELSE first_user + (random() * (n_users - 1))::int END,
           b.id, (random() * 5000)::int, svc, 1 + (random() * 20)::int,
           (ARRAY['Haircut','Beard trim','Haircut and beard','Kids cut','Shave'])[svc],
           st, (ARRAY[30, 20, 45, 30, 25])[svc], (ARRAY[35, 20, 55, 25, 30])[svc] + (random() * 20)::int,
           CASE WHEN st < demo_now()
                THEN demo_pick(ARRAY['completed','cancelled','no_show','requires_rescheduling','conflicted','scheduled'],
                               ARRAY[0.78, 0.90, 0.97, 0.985, 0.99, 1.0], r)
                ELSE demo_pick(ARRAY['scheduled','confirmed','pending','cancelled'], ARRAY[0.55, 0.90, 0.95, 1.0], r)
           END,
           least(st, demo_now()) - random() * interval '14 days',
           random() < 0.01
    FROM (SELECT g, random() AS r, 1 + (random() * 4)::int AS svc,
                 demo_now() - interval '180 days' + random() * interval '210 days' AS st,
                 1 + (random() * (n_barbers - 1))::int AS bn
          FROM generate_series(1, n_appointments) g) s
    JOIN demo_barbers b ON b.n = s.bn;

    -- Payments for bookings, mostly completed; refunds and disputes are rare.
    INSERT INTO payments (user_id, appointment_id, barber_id, organization_id, amount, status,
                          stripe_payment_intent_id, platform_fee, barber_amount, commission_rate,
                          refund_amount, refunded_at, created_at, updated_at)
    SELECT a.user_id, a.id, a.barber_id, a.organization_id, a.price, p.status,
           'pi_demo_' || a.id, round((a.price * 0.1)::numeric, 2), round((a.price * 0.9)::numeric, 2), 0.1,
           CASE p.status WHEN 'refunded' THEN a.price WHEN 'partially_refunded' THEN round((a.price / 2)::numeric, 2) ELSE 0 END,
           CASE WHEN p.status IN ('refunded', 'partially_refunded') THEN a.start_time + interval '1 day' END,
           a.created_at, CASE WHEN a.start_time < demo_now() THEN a.start_time ELSE a.created_at END
    FROM (SELECT id, user_id, barber_id, organization_id, price, created_at, start_time
          FROM appointments ORDER BY id DESC LIMIT n_payments) a
    CROSS JOIN LATERAL (SELECT demo_pick(ARRAY['completed','pending','failed','refunded','partially_refunded','disputed'],
                                         ARRAY[0.82, 0.87, 0.93, 0.97, 0.995, 1.0], random() + a.id * 0) AS status) p;

    INSERT INTO refunds (payment_id, amount, reason, status, created_at, processed_at)
    SELECT id, refund_amount, 'requested_by_customer', 'completed', refunded_at, refunded_at + interval '1 hour'
    FROM payments WHERE refund_amount > 0 AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = payments.id);

    -- Weekly payouts per barber over the last two months.
    INSERT INTO payouts (barber_id, amount, status, period_start, period_end, created_at, processed_at)
    SELECT b.id, round((200 + random() * 800)::numeric, 2),
           CASE WHEN w = 0 THEN 'pending' WHEN w = 1 THEN demo_pick(ARRAY['processing','failed','completed'], ARRAY[0.6, 0.7, 1.0], random() + b.id * 0)
                ELSE 'completed' END,
           date_trunc('week', demo_now()) - (w + 1) * interval '7 days',
           date_trunc('week', demo_now()) - w * interval '7 days',
           date_trunc('week', demo_now()) - w * interval '7 days',
           CASE WHEN w > 1 THEN date_trunc('week', demo_now()) - w * interval '7 days' + interval '2 days' END
    FROM demo_barbers b CROSS JOIN generate_series(0, 7) w;

    INSERT INTO guest_bookings (status, payment_status, service_price, deposit_amount, created_at)
    SELECT demo_pick(ARRAY['completed','confirmed','pending','cancelled'], ARRAY[0.6, 0.8, 0.9, 1.0], random()),
           demo_pick(ARRAY['paid','pending','refunded'], ARRAY[0.8, 0.95, 1.0], random()),
           30 + (random() * 30)::int, 10, demo_now() - random() * interval '90 days'
    FROM generate_series(1, greatest(n_appointments / 20, 1));
END $$;

-- One step of a live shop: a few new bookings and payments, and the older
-- ones move along their lifecycle.
CREATE OR REPLACE FUNCTION demo_tick() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    new_ids int[];
BEGIN
    WITH picked AS (
        SELECT (SELECT id FROM users WHERE unified_role = 'client' AND NOT is_test_data
                ORDER BY random() + g * 0 LIMIT 1) AS client,
               (SELECT id FROM users WHERE unified_role IN ('barber', 'individual_barber', 'shop_owner')
                ORDER BY random() + g * 0 LIMIT 1) AS barber,
               random() AS r
        FROM generate_series(1, 1 + (random() * 3)::int) g
    ), inserted AS (
        INSERT INTO appointments (user_id, barber_id, service_name, start_time, duration_minutes, price, status, created_at)
        SELECT CASE WHEN r < 0.2 THEN NULL ELSE client END, barber, 'Haircut',
               demo_now() + (1 + random() * 72) * interval '1 hour', 30, 30 + (random() * 30)::int,
               CASE WHEN r < 0.5 THEN 'scheduled' ELSE 'pending' END, demo_now()
        FROM picked
        RETURNING id, user_id, barber_id, price
    ), paid AS (
        INSERT INTO payments (user_id, appointment_id, barber_id, amount, status, platform_fee, barber_amount)
        SELECT user_id, id, barber_id, price, 'pending', round((price * 0.1)::numeric, 2), round((price * 0.9)::numeric, 2)
        FROM inserted
        RETURNING appointment_id
    )
    SELECT array_agg(appointment_id) INTO new_ids FROM paid;

    -- Pending payments settle within a minute or two: most succeed.
    UPDATE payments SET status = CASE WHEN random() < 0.9 THEN 'completed' ELSE 'failed' END,
                        updated_at = demo_now()
    WHERE id IN (SELECT id FROM payments WHERE status = 'pending' AND created_at < demo_now() - interval '20 seconds'
                 AND NOT (appointment_id = ANY(coalesce(new_ids, '{}'))) LIMIT 3);

    UPDATE appointments SET status = 'confirmed'
    WHERE id IN (SELECT id FROM appointments WHERE status = 'pending' AND created_at < demo_now() - interval '30 seconds' LIMIT 2);

    UPDATE appointments SET status = CASE WHEN random() < 0.9 THEN 'completed' ELSE 'no_show' END
    WHERE id IN (SELECT id FROM appointments WHERE status IN ('scheduled', 'confirmed')
                 AND start_time < demo_now() - interval '1 hour' LIMIT 5);

    IF random() < 0.1 THEN
        UPDATE payments SET status = 'refunded', refund_amount = amount, refunded_at = demo_now(), updated_at = demo_now()
        WHERE id = (SELECT id FROM payments WHERE status = 'completed' ORDER BY id DESC LIMIT 1 OFFSET (random() * 20)::int);
        UPDATE appointments SET status = 'cancelled'
        WHERE id = (SELECT id FROM appointments WHERE status IN ('scheduled', 'confirmed') ORDER BY random() LIMIT 1);
    END IF;

    IF random() < 0.3 THEN
        INSERT INTO guest_bookings (status, payment_status, service_price, deposit_amount, created_at)
        VALUES ('pending', 'pending', 30 + (random() * 30)::int, 10, demo_now());
    END IF;

    IF random() < 0.2 THEN
        INSERT INTO users (email, role, unified_role, created_at)
        VALUES ('signup-' || gen_random_uuid() || '@demo.bookedbarber.test', 'client', 'client', demo_now());
    END IF;
END $$;
